"""Helper for tests/test_multihost.py: process 1 alone hits a bad row; with
`sharding.raise_together` both processes raise its message (none waits forever).

  python tests/multihost_errors.py PROCESS_ID NUM_PROCESSES PORT
"""

import sys

import jax


def main(pid: int, nproc: int, port: str) -> None:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"localhost:{port}", num_processes=nproc, process_id=pid)
  from jaxskill.runtime import sharding
  from jaxskill.tasks import TaskError

  def encode_my_rows():
    if jax.process_index() == 1:
      raise TaskError("task 't' train example 7: input is 90 tokens, 30 fit")
    return "fine"

  try:
    sharding.raise_together(encode_my_rows, TaskError)
  except TaskError as e:
    print(f"raised: {e}", flush=True)
    sys.exit(3)
  print("no error", flush=True)


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
