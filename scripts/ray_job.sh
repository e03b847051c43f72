#!/bin/sh
# The entry point `make submit` has Ray run on the head node, in the uploaded working dir:
#   sh scripts/ray_job.sh <python> <hydra overrides of scripts/extract.py...>
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
exec "$py" scripts/extract.py "$@"
