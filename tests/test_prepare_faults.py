"""Preparation under faults: a full disk, a killed preparation's leftovers, damaged shards, metadata and tokenizer."""

import errno
import json
import logging
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from spt_jax.data import prepare as prepare_lib
from spt_jax.data import shards
from spt_jax.storage import layout

sys.path.insert(0, os.path.dirname(__file__))
from test_prepare import _config


def _arrays(data):
  return {
    **{f'train_{k}': np.array(v) for k, v in data.train.items()},
    **{f'eval_{k}': np.array(v) for k, v in data.eval_sets.items()},
  }


def test_too_little_free_space_is_one_line_before_writing(tmp_path, monkeypatch):
  config = _config(tmp_path)
  real = shards.shutil.disk_usage
  monkeypatch.setattr(shards.shutil, 'disk_usage', lambda path: real(path)._replace(free=1 << 20))
  with pytest.raises(shards.DiskFullError, match=r'not enough disk space in .*prepared.* GB needed') as error:
    prepare_lib.prepare(config)
  assert '\n' not in str(error.value)
  prepared = tmp_path / 'cache' / 'prepared'
  # Nothing half-written is left: only the tokenizer cache and the per-key lock files of the cache.
  assert (
    not [p for p in prepared.iterdir() if p.name != 'tokenizers' and not p.name.endswith('.lock')]
    if prepared.exists()
    else True
  )


@pytest.mark.parametrize('keep_tokenized, first_written', [(True, 'tokenized'), (False, 'prepared')])
def test_a_disk_that_fills_up_while_writing_is_one_line_and_leaves_nothing(
  tmp_path, monkeypatch, keep_tokenized, first_written
):
  config = _config(tmp_path, keep_tokenized=keep_tokenized)

  class Full:
    """A file on a disk with 10 kB left."""

    def __init__(self, path):
      self.file, self.left = open(path, 'wb'), 10_000

    def write(self, data):
      size = memoryview(data).nbytes
      if size > self.left:
        raise OSError(errno.ENOSPC, 'No space left on device')
      self.left -= size
      return self.file.write(data)

    def __getattr__(self, name):
      return getattr(self.file, name)

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      self.file.close()

  monkeypatch.setattr(shards, 'open_for_write', Full)
  with pytest.raises(shards.DiskFullError, match='filled up while writing') as error:
    prepare_lib.prepare(config)
  # The first file written: a source's kept tokens (cache/tokenized/), or its spill in the prepared partial folder.
  assert '\n' not in str(error.value) and str(tmp_path / 'cache' / first_written) in str(error.value)
  for folder in ('prepared', 'tokenized'):  # The partial folders are removed.
    assert not list((tmp_path / 'cache' / folder).glob('.*tmp-*')), folder
  monkeypatch.undo()
  assert len(prepare_lib.prepare(config).train['domain'])  # Space freed: the same command works.


def test_temporary_folders_of_dead_preparations_are_removed(tmp_path):
  config = _config(tmp_path)
  prepared = tmp_path / 'cache' / 'prepared'
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
  stale = prepared / f'.0123456789abcdef.tmp-{socket.gethostname()}-{dead.stdout.strip()}'
  live = prepared / f'.0123456789abcdef.tmp-{socket.gethostname()}-{os.getppid()}'
  for folder in (stale, live):
    folder.mkdir(parents=True)
    (folder / 'train_general.npy').write_bytes(b'x' * 1000)
  prepare_lib.prepare(config)
  assert not stale.exists() and live.exists()


def test_a_damaged_shard_is_found_by_its_checksum_set_aside_and_rebuilt(tmp_path, caplog):
  config = _config(tmp_path)
  first = prepare_lib.prepare(config)
  expected = _arrays(first)
  shard = first.path / 'train_domain.npy'
  with open(shard, 'r+b') as file:  # Flip one byte in the middle: same size, same ends.
    file.seek(os.path.getsize(shard) // 2)
    byte = file.read(1)
    file.seek(-1, os.SEEK_CUR)
    file.write(bytes([byte[0] ^ 0xFF]))
  del first
  with caplog.at_level(logging.WARNING):
    again = prepare_lib.prepare(config)
  assert 'train_domain.npy does not match its recorded checksum' in caplog.text
  assert list(again.path.parent.glob(f'{again.path.name}.damaged-*'))
  for name, rows in _arrays(again).items():
    assert np.array_equal(rows, expected[name]), name
  assert not shards.damaged_files(again.path, again.metadata['shards'])


@pytest.mark.parametrize(
  'name, damage',
  [
    ('metadata.json', 'flipped'),
    ('metadata.json', 'empty'),
    ('tokenizer.json', 'flipped'),
    ('tokenizer.json', 'garbage'),
  ],
)
def test_damaged_metadata_or_tokenizer_is_found_set_aside_and_rebuilt(tmp_path, caplog, name, damage):
  config = _config(tmp_path)
  first = prepare_lib.prepare(config)
  expected, tokenizer = _arrays(first), first.tokenizer.to_str()
  path = first.path / name
  if damage == 'flipped':  # Still valid JSON: a digit changed, as a bad sector might.
    text = path.read_text()
    digit = next(i for i, c in enumerate(text) if c.isdigit() and i > len(text) // 2)
    path.write_text(text[:digit] + str((int(text[digit]) + 1) % 10) + text[digit + 1 :])
  else:
    path.write_bytes(b'' if damage == 'empty' else b'\xb8' * path.stat().st_size)
  del first
  with caplog.at_level(logging.WARNING):
    again = prepare_lib.prepare(config)
  warnings = [r.getMessage() for r in caplog.records if 'is damaged' in r.getMessage()]
  set_aside = list(again.path.parent.glob(f'{again.path.name}.damaged-*'))
  assert len(set_aside) == 1 and len(warnings) == 1, warnings
  assert warnings[0] == (
    f'prepared data {again.path} is damaged ({name} does not match its recorded checksum): '
    f'set aside as {set_aside[0]}, preparing it again'
  )
  assert again.tokenizer.to_str() == tokenizer
  for key, rows in _arrays(again).items():
    assert np.array_equal(rows, expected[key]), key
  assert not shards.damaged_files(again.path, json.loads((again.path / layout.PREPARED_CHECKSUMS).read_text()))


def test_a_folder_without_checksums_gets_them_and_is_then_checked(tmp_path, caplog):
  config = _config(tmp_path)
  first = prepare_lib.prepare(config)
  checksums = first.path / layout.PREPARED_CHECKSUMS
  recorded = checksums.read_text()
  checksums.unlink()  # As a folder prepared before checksums.json, or killed just before writing it.
  (first.path / 'tokenizer.json').write_text('{"not": "a tokenizer"}')  # Unrecorded, but it does not load.
  with caplog.at_level(logging.WARNING):
    again = prepare_lib.prepare(config)
  assert 'metadata.json or tokenizer.json does not load (Exception)' in caplog.text
  rebuilt = json.loads(checksums.read_text())  # Rebuilt and recorded (metadata.json holds the build's timing).
  assert rebuilt['tokenizer.json'] == json.loads(recorded)['tokenizer.json']
  assert not shards.damaged_files(again.path, rebuilt)
  recorded = checksums.read_text()
  checksums.unlink()
  assert prepare_lib.prepare(config).path == again.path and checksums.read_text() == recorded  # Recorded on use.
