"""Runnable example apps for async_scoped_session_ext (see ``examples/demo.py``)."""
