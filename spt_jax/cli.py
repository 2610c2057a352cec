"""The command-line convention of every entry point: absl flags, `--help`, and one-line errors with two exit codes.

Entry points: spt_jax.main, plan, bench, export, sample, evaluate_mcqa, spt_jax.data.fetch, prepare and bench, and
every experiments.<study>. Each parses absl flags here (`run`); those that read a config take it with
ml_collections.config_flags (`--config=configs/<domain>.py:<size> --config.KEY=VALUE`). `--help` prints the
command's docstring and its flags on stdout and exits 0. An error is one line on stderr starting `error: `, never a
traceback (SPT_JAX_TRACEBACK=1 shows it), and its exit status says what kind it is:

  2  usage: the command line is wrong in itself, which is found before any work starts. An unknown flag or
     subcommand, a value that does not parse or lies outside the flag's range (absl bounds, enums, validators
     registered beside the flag), a missing required flag, a config file that does not exist, an unknown config
     size or `--config.KEY`. Entry points raise UsageError for such checks they make themselves.
  1  fault: the work could not be done. What the flags point to is wrong (a config whose values do not fit
     together or this machine, as spt_jax.train.validate finds at the start of a run; data missing or damaged; a
     fit that has too few points), a disk fills up, a run fails. Library code reports bad input it meets at work
     as a one-line ValueError: that, and OSError, are faults.

Any other exception is a bug and keeps its traceback. This module imports nothing of spt_jax, so that entry points
of every layer (spt_jax.data's included) may use it.
"""

import difflib
import importlib.util
import os
import pathlib
import re
import sys
from collections.abc import Callable
from typing import NoReturn

import ml_collections
from absl import app, flags
from ml_collections.config_flags.config_flags import ConfigFileFlagParser  # What DEFINE_config_file's flags parse by.

USAGE = 2
FAULT = 1
_HELP = re.compile(r'--?(help|helpshort|helpfull|\?)')


class UsageError(ValueError):
  """The command line is wrong in itself (exit 2); the message is one line naming the flag and the fix."""


def run(
  main: Callable,
  define_flags: Callable[[], None] | None = None,
  *,
  argv: list[str] | None = None,
  flag_values: flags.FlagValues | None = None,
) -> NoReturn:
  """Parses the command line, runs main(positional arguments) and exits with the convention's status."""
  sys.exit(status(main, define_flags, argv=argv, flag_values=flag_values))


def status(
  main: Callable,
  define_flags: Callable[[], None] | None = None,
  *,
  argv: list[str] | None = None,
  flag_values: flags.FlagValues | None = None,
) -> int:
  """run() without the exit: the status (0, 1, 2 or main's own); errors are printed as one line.

  flag_values None: the global absl FLAGS, parsed through absl's app.run (its logging set-up included). A
  FlagValues of the caller's own (plan, data.fetch) is parsed afresh each call, so that main can be called again
  in one process.
  """
  argv = list(sys.argv if argv is None else argv)
  try:
    if define_flags is not None:
      define_flags()
    if flag_values is None:  # app.run exits with main's return value.
      app.run(_usage_errors(main), argv=argv, flags_parser=lambda arguments: parse(arguments, flags.FLAGS))
    return _usage_errors(main)(parse(argv, flag_values)) or 0
  except SystemExit as exit_:  # app.run exits with main's return value; --help exits 0.
    if exit_.code is None or isinstance(exit_.code, int):
      return exit_.code or 0
    print(exit_.code, file=sys.stderr)  # sys.exit('message'), as Python itself prints it.
    return FAULT
  except UsageError as error:
    return _one_line(error, USAGE)
  except (ValueError, OSError) as error:
    return _one_line(error, FAULT)


def parse(argv: list[str], flag_values: flags.FlagValues) -> list[str]:
  """Parses argv into flag_values and returns [program, *positional]; UsageError for anything wrong in it."""
  before_separator = argv[1 : argv.index('--')] if '--' in argv else argv[1:]
  if any(_HELP.fullmatch(argument) for argument in before_separator):
    print(help_text(flag_values))
    raise SystemExit(0)
  for name in list(flag_values):
    if isinstance(flag_values[name].parser, ConfigFileFlagParser):
      _check_config_flag(name, getattr(flag_values[name], 'default_unparsed', None), argv)
  try:
    return flag_values(argv)
  except flags.UnrecognizedFlagError as error:
    raise UsageError(f'{_first_line(error)} (--help lists the flags)') from error
  except flags.Error as error:
    raise UsageError(_first_line(error)) from error


def help_text(flag_values: flags.FlagValues) -> str:
  """The command's docstring, then its flags (this project's, not absl's own)."""
  main_module = sys.modules['__main__']
  modules = [
    module
    for module in flag_values.flags_by_module_dict()
    if module == sys.argv[0] or module.split('.')[0] in ('spt_jax', 'experiments') or flag_values is not flags.FLAGS
  ]
  modules.sort(key=lambda module: module != sys.argv[0])  # The command's own flags first.
  listing = '\n'.join(flag_values.module_help(module) for module in modules)
  return f'{(main_module.__doc__ or "").strip()}\n\nflags:\n{listing}'


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`path/to/config.py[:size]` as config_flags reads it (the file's get_config(size)); UsageError if it cannot be."""
  path, _, size = spec.partition(':')
  if not pathlib.Path(path).is_file():
    raise UsageError(f'config file {path!r} does not exist; pass --config=configs/<domain>.py[:size]')
  if not path.endswith('.py'):
    raise UsageError(f'config file {path!r} is not a Python file; pass --config=configs/<domain>.py[:size]')
  module_spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except (OSError, SyntaxError, UnicodeDecodeError) as error:
    raise UsageError(
      f'config file {path!r} cannot be read as Python ({type(error).__name__}: {_first_line(error)}); fix it or '
      'pass another --config'
    ) from None
  except Exception as error:  # The file's own code failed: say so in one line, whatever it raised.
    raise UsageError(
      f'config file {path!r} raised {type(error).__name__} when loaded ({_first_line(error)}); fix the file or '
      'pass another --config'
    ) from None
  if not callable(getattr(module, 'get_config', None)):
    raise UsageError(f'config file {path!r} has no get_config(); define get_config(arg) returning the config')
  try:
    return module.get_config(size) if size else module.get_config()
  except ValueError as error:  # An unknown size: configs/common.py names the valid ones.
    raise UsageError(f'--config={spec}: {_first_line(error)}') from error
  except Exception as error:
    raise UsageError(
      f'config file {path!r}: get_config({size!r}) raised {type(error).__name__} ({_first_line(error)}); fix '
      'the file or choose another size'
    ) from None


def _check_config_flag(name: str, default: str | None, argv: list[str]) -> None:
  """The config file of --NAME exists and every --NAME.KEY override names a key of it (close keys suggested)."""
  spec, overrides = default, []
  for index, argument in enumerate(argv):
    if argument.startswith(f'--{name}='):
      spec = argument.split('=', 1)[1]
    elif argument == f'--{name}' and index + 1 < len(argv):
      spec = argv[index + 1]
    elif argument.startswith(f'--{name}.'):
      overrides.append(argument[len(name) + 3 :].split('=', 1)[0])
  if not spec or (spec == default and not overrides):
    return  # Absent (a required flag says so) or the default unchanged (config_flags reads it).
  valid = flat_keys(load_config(spec))
  for key in overrides:
    if key not in valid:
      close = difflib.get_close_matches(key, valid, n=5, cutoff=0.6)
      hint = f'close valid keys: {", ".join(close)}' if close else 'see spt_jax/train/config.py for every key'
      raise UsageError(f'unknown config key {key!r}; {hint}')


def flat_keys(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  """Every key of a config as a dotted path (sub-configs and their leaves)."""
  keys = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      keys.extend(flat_keys(value, f'{prefix}{key}.'))
    keys.append(f'{prefix}{key}')
  return keys


def _usage_errors(main: Callable) -> Callable:
  """main, with absl's app.UsageError (which app.run would print with the whole usage, exit 1) as a UsageError."""

  def wrapped(argv):
    try:
      return main(argv)
    except app.UsageError as error:
      raise UsageError(_first_line(error)) from error

  return wrapped


def _first_line(error: BaseException) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[0] if lines else type(error).__name__


def _one_line(error: BaseException, code: int) -> int:
  if os.environ.get('SPT_JAX_TRACEBACK'):
    raise error
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  print(f'error: {"; ".join(lines) or type(error).__name__}', file=sys.stderr)
  return code


def item(
  kind: Callable[[str], object], check: Callable[[object], bool] = lambda value: True, meaning: str = ''
) -> Callable[[str], object]:
  """A converter of one flag value (or list item): kind(text), then check; ValueError saying what it should be."""

  def convert(text: str):
    try:
      value = kind(text)
    except ValueError:
      raise ValueError(f'{text!r} is not {meaning or kind.__name__}') from None
    if not check(value):
      raise ValueError(f'{text} is not {meaning}')
    return value

  return convert


FRACTION = item(float, lambda value: 0 <= value < 1, 'a fraction in [0, 1) (0.02 for 2%)')
OPEN_FRACTION = item(float, lambda value: 0 < value < 1, 'a fraction in (0, 1) (0.02 for 2%)')
SEED = item(int, lambda value: value >= 0, 'a seed (an integer >= 0)')


def must_exist(name: str, what: str, flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """A validator: the path (or each path of a list) flag --name names exists, when given; what: the fix. A store
  URL (gs://...) is checked where it is opened."""

  def check(value) -> bool:
    for path in [value] if isinstance(value, str) else value or []:
      if path and '://' not in path and not os.path.exists(path):
        raise flags.ValidationError(f'{path} does not exist; {what}')
    return True

  flags.register_validator(name, check, flag_values=flag_values)


class _Parser(flags.ArgumentParser):
  """A flag value converted (and checked) by a function at parse time, so that its errors name the flag."""

  def __init__(self, convert: Callable[[str], object], kind: str):
    self._convert, self._kind = convert, kind

  def parse(self, argument):
    return self._convert(argument) if isinstance(argument, str) else argument

  def flag_type(self) -> str:
    return self._kind


class _ListParser(flags.ListParser):
  """A comma-separated list whose items are converted (and checked) by a function at parse time."""

  def __init__(self, convert: Callable[[str], object]):
    super().__init__()
    self._convert = convert

  def parse(self, argument):
    return [self._convert(x) if isinstance(x, str) else x for x in super().parse(argument)]


def define(
  name: str, default, help_text: str, convert: Callable[[str], object], *, flag_values: flags.FlagValues = flags.FLAGS
) -> flags.FlagHolder:
  """A flag whose value is convert(text): a δ with `%`, a token count like 200B, a checked number."""
  return flags.DEFINE(_Parser(convert, 'a value'), name, default, help_text, flag_values, module_name=_calling_module())


def define_list(
  name: str, default, help_text: str, convert: Callable[[str], object], *, flag_values: flags.FlagValues = flags.FLAGS
) -> flags.FlagHolder:
  """A comma-separated list flag whose items are convert(item) (e.g. FRACTION), checked as they are parsed."""
  return flags.DEFINE(
    _ListParser(convert),
    name,
    default,
    help_text,
    flag_values,
    serializer=flags.ListSerializer(','),
    module_name=_calling_module(),
  )


def _calling_module() -> str:
  """The module that called define*: where --help lists the flag (absl would list it under this one)."""
  name = sys._getframe(2).f_globals.get('__name__', '')
  return sys.argv[0] if name == '__main__' else name
