"""``metadata=``: the tables of a scoped session's database, and its mapped models if known."""

from __future__ import annotations

import typing as t

from sqlalchemy import MetaData
from sqlalchemy.orm import registry


class DeclarativeLike(t.Protocol):
    """A declarative base class (``class Base(DeclarativeBase)``): its tables and models."""

    metadata: MetaData
    registry: registry


def split_models(
    given: MetaData | DeclarativeLike | None,
) -> tuple[MetaData | None, registry | None]:
    """The metadata and the models' registry *given* to ``metadata=`` names.

    A ``MetaData`` has tables only; a declarative base class has both (``Base.metadata``,
    ``Base.registry``), so the shell can offer its models.
    """
    if given is None or isinstance(given, MetaData):
        return given, None
    metadata = getattr(given, "metadata", None)
    models = getattr(given, "registry", None)
    if isinstance(metadata, MetaData) and isinstance(models, registry):
        return metadata, models
    raise TypeError(
        f"metadata= takes a MetaData (for example Base.metadata) or a declarative base class"
        f" (Base, whose models the shell then offers), not {given!r}. Pass Base.metadata"
        " for tables declared with Table(...), or the class your models inherit from."
    )


def mapped_classes(models: registry) -> dict[str, type[t.Any]]:
    """The classes mapped by *models*, by class name."""
    return {mapper.class_.__name__: mapper.class_ for mapper in models.mappers}
