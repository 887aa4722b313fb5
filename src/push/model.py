"""The base of Push's typed facts: one pydantic class per fact, whose JSON is what Push
writes to the bucket, answers over HTTP and prints with --json.

Every fact (an agent report, a history record, a unit request, a server's state, a change)
subclasses `Model`, so they all read and write JSON the same way: field names as stored
(`from` through an alias where Python needs `from_`), unknown keys ignored on reading (an
object written by a newer Push still reads), and every field written every time, so what
Push writes is valid by construction. Adding a field is one line in the class that owns it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from push.errors import InvalidData


class Model(BaseModel):
    """A fact Push writes or answers as JSON."""

    # What the fact is called in an error message ("not a valid agent report").
    noun: ClassVar[str] = "object"

    model_config = ConfigDict(
        extra="ignore",             # tolerant reading: keys a newer writer added are skipped
        validate_by_name=True,      # Python code says `from_=`, JSON says "from"
        validate_by_alias=True,
        serialize_by_alias=True,
    )

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this fact (every field, by its stored name)."""
        return self.model_dump(mode="json")

    def to_bytes(self, indent: int | None = None) -> bytes:
        """The JSON text of this fact, as stored in the bucket or sent over HTTP."""
        return self.__pydantic_serializer__.to_json(self, indent=indent)

    @classmethod
    def from_json(cls, data: object, key: str | None = None) -> Self:
        """Read a fact from parsed JSON; InvalidData (with `key`) if it is not one."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise cls._invalid(e, key) from None

    @classmethod
    def from_bytes(cls, data: bytes, key: str | None = None) -> Self:
        """Read a fact from JSON text; InvalidData (with `key`) if it is not one."""
        try:
            return cls.model_validate_json(data)
        except ValidationError as e:
            raise cls._invalid(e, key) from None

    @classmethod
    def _invalid(cls, e: ValidationError, key: str | None) -> InvalidData:
        return InvalidData(f"{key or cls.noun}: not a valid {cls.noun}: {first_problem(e)}", key=key)


def first_problem(e: ValidationError) -> str:
    """The first problem pydantic found, as one line: where and what."""
    err = e.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else str(err["msg"])
