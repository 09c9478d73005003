"""pytest hooks shared by nbval (nbs/) and the tests (tests/)."""

def pytest_collection_modifyitems(config, items):
    """nbdev_clean stores notebooks with execution_count = null, and nbval then fails every cell
    that kept its output ("Unrun reference cell has outputs"). Number such cells in order, once, here."""
    for i, item in enumerate(items, 1):
        cell = getattr(item, 'cell', None)
        if cell is not None and cell.get('execution_count') is None and cell.get('outputs'):
            cell['execution_count'] = i
