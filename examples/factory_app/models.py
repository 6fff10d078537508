"""The app's one table."""

from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

TodoJSON = dict[str, int | str | bool]


class Base(DeclarativeBase):
    pass


class Todo(Base):
    __tablename__ = "factory_todo"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    done: Mapped[bool] = mapped_column(default=False)

    def to_json(self) -> TodoJSON:
        return {"id": self.id, "title": self.title, "done": self.done}
