"""Test ordering: the slow end-to-end tests first, so that pytest-xdist's workers end together with short ones."""


def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: item.get_closest_marker('slow') is None)  # A stable sort keeps the order otherwise.
