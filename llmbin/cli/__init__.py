"""`llmbin` command line: one click command per module, each a thin wrapper over the stage that does the work."""
from .bench import bench_command
from .catalog import formats_command, methods_command, models_command
from .compare import compare_command
from .distill import distill_command
from .errors import friendly_errors
from .evaluate import eval_command
from .generate import generate_command
from .inspect import inspect_command
from .main import main
from .quantize import quantize_command
from .replay import replay_check_command

for _command in (quantize_command, eval_command, inspect_command, methods_command, formats_command, models_command,
                 replay_check_command, compare_command, distill_command, bench_command, generate_command):
    main.add_command(_command)

__all__ = ["main", "friendly_errors"]
