#!/bin/sh
# The entry point `make submit` / `make submit-train` have Ray run on one node, in the uploaded working dir:
#   sh scripts/ray_job.sh <python> scripts/extract.py <hydra overrides...>
#   sh scripts/ray_job.sh <python> scripts/train_ray.py <hydra overrides...>
# <python> is the project's locked environment on the cluster (.venv/bin/python of the checkout
# the nodes run `ray start` from). A job's bare `python` would be whatever the head's PATH finds
# first: Ray runs the entry point with the environment `ray start` was given, not in its .venv.
py=$1
shift
if [ ! -x "$py" ]; then
  echo "error: no Python at $py on the head node ($(hostname)). Every node must run \`ray start\` from the" \
       "project's .venv (uv sync --locked) at the same path; pass that path: make submit CLUSTER_PYTHON=/path/to/.venv/bin/python" >&2
  exit 2
fi
exec "$py" "$@"
