"""The models the usage modules share, declared as a typed application declares them."""

from __future__ import annotations

import typing as t

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, QueryPropertyDescriptor, mapped_column


class Base(DeclarativeBase):
    #: Set by ``Base.query = session.query_property()``; ``User.query`` is a ``Query[User]``.
    query: t.ClassVar[QueryPropertyDescriptor]


class User(Base):
    __tablename__ = "typing_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


class Note(Base):
    __tablename__ = "typing_note"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey(User.id))
    text: Mapped[str] = mapped_column(String(500))
