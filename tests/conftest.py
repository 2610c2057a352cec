"""Test ordering: the slow end-to-end tests first. pytest-xdist hands each worker half of the queue and an idle worker
takes tests from the end of the other's (--dist worksteal), so the workers end together on short tests."""


def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: item.get_closest_marker('slow') is None)  # A stable sort keeps the order otherwise.
