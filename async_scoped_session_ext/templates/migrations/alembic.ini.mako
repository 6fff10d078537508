# Alembic's settings for 'flask db' / 'quart db' (async_scoped_session_ext). The script
# location and the engines come from the app; this file configures logging only, and only
# when the app has not configured logging itself.

[alembic]
# template used to generate migration files
# file_template = %%(rev)s_%%(slug)s

[loggers]
keys = root,sqlalchemy,alembic,async_scoped_session_ext

[logger_async_scoped_session_ext]
level = INFO
handlers =
qualname = async_scoped_session_ext.migrations

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console
qualname =

[logger_sqlalchemy]
level = WARNING
handlers =
qualname = sqlalchemy.engine

[logger_alembic]
level = INFO
handlers =
qualname = alembic

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
datefmt = %H:%M:%S
