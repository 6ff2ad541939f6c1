from tests.search.test_loop import learnable_data  # noqa: F401  (the session fixture)
