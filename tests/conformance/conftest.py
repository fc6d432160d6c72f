"""pytest configuration for the CPython test_asyncio conformance suite."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "conformance: CPython's test_asyncio on ferroloop (slow; select with -m conformance)",
    )
