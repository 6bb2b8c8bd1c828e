"""torchrun as ``dist_train.sh`` runs it, ending in one line instead of a traceback wall.

``python -m vsrkit.engine.torchrun [torchrun arguments] train.py ...`` is ``python -m torch.distributed.run``, except
for how it ends. A SIGTERM/SIGINT to the launcher is forwarded by torchrun to the training processes (each saves a
resumable state and says so in one line) and then raised out of torchrun's ``main`` as ``SignalException``, whose
traceback torchrun prints; a training process that exits non-zero makes torchrun raise ``ChildFailedError`` with a
multi-line report. Here both become one line, and the exit status says what happened: 128 + the signal number,
or the first failed process's own exit status (the processes have printed their reasons themselves).
"""
from __future__ import annotations

import logging
import signal
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun_main


def main(argv: list[str] | None = None) -> int:
    # torchrun's own warnings while it shuts the processes down (one per process, plus its traceback of the
    # signal) would repeat what the processes and the line below say
    # (each of torchrun's loggers sets its own level when created, so each is set here)
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith('torch.distributed.elastic'):
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        torchrun_main(argv)
    except SignalException as err:
        name = signal.Signals(err.sigval).name
        print(f'torchrun: {name} received and passed to the training processes; they saved a resumable state '
              '(resume with --auto_resume)', file=sys.stderr)
        return 128 + int(err.sigval)
    except ChildFailedError as err:
        failed = ', '.join(f'rank {rank} exit status {failure.exitcode}'
                           for rank, failure in sorted(err.failures.items()))
        print(f'torchrun: training process(es) failed: {failed} (their messages are above)', file=sys.stderr)
        first = err.get_first_failure()[1].exitcode
        return first if 0 < first < 256 else 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
