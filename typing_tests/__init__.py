"""The public API used the way applications use it, checked by mypy and pyright, never run.

Each ``assert_type`` pins a type users rely on, and each ``# type: ignore[code]`` marks a
mistake that must stay a type error: with ``warn_unused_ignores`` (``mypy --strict``) and
``reportUnnecessaryTypeIgnoreComment`` (pyright), a line that stops being an error fails.
"""
