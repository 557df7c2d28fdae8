"""Token usage per model call, as LibreChat collects it for billing (docs/protocol.md, deviation d).

Source shapes (danny-avila/LibreChat):

- ``packages/api/src/stream/interfaces/IJobStore.ts`` ``UsageMetadata``: ``input_tokens``,
  ``output_tokens``, ``total_tokens``, ``model``, ``provider``, ``agentId``, ``usage_type``, the
  OpenAI cache shape ``input_token_details: {cache_creation, cache_read}`` and the Anthropic cache
  shape ``cache_creation_input_tokens`` / ``cache_read_input_tokens`` ("mutually exclusive"),
  plus ``output_token_details: {reasoning, audio}``. ``AbortResult.collectedUsage`` is a list of
  these, one per model call.
- ``api/server/controllers/agents/client.js`` ``recordCollectedUsage``: how LibreChat reads a
  record for spending — ``cache_creation = input_token_details.cache_creation ||
  cache_creation_input_tokens || 0``, ``cache_read = input_token_details.cache_read ||
  cache_read_input_tokens || 0``, prompt ``input = input_tokens``, completion ``output_tokens``.
- Raw OpenAI chat-completions usage (``prompt_tokens``, ``completion_tokens``,
  ``prompt_tokens_details.cached_tokens``) is accepted too, so a remote producer that forwards
  the provider's object untouched is still billed correctly.

Unknown fields are dropped on decode, deliberately: records are stored (KV, event log) and echoed
back in every ``AbortResult``, so keeping arbitrary producer blobs would let one producer bloat
another service's billing input. Every field LibreChat's spending code reads is modelled.
Counts are non-negative integers: a negative count would silently refund tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct, field

Tokens = Annotated[int, Meta(ge=0)]
"""A token count; negative counts are refused rather than subtracted from a bill."""


class InputTokenDetails(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """OpenAI/LangChain style cache breakdown; both counts are part of ``input_tokens``."""

    cache_creation: Tokens | None = None
    cache_read: Tokens | None = None
    cache_write_tokens: Tokens | None = None


class OutputTokenDetails(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Subsets of ``output_tokens`` (LangChain contract), never extra charges."""

    reasoning: Tokens | None = None
    audio: Tokens | None = None


class PromptTokensDetails(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The raw OpenAI API spelling of the cache-read count."""

    cached_tokens: Tokens | None = None
    cache_write_tokens: Tokens | None = None


class UsageTotals(Struct, frozen=True, kw_only=True):
    """Provider-neutral counts, the four buckets LibreChat's structured spending prices.

    ``input`` is the prompt count as the provider reported it; LibreChat prices it next to
    ``cache_write``/``cache_read`` without subtracting them, and so does this type, so totals
    reconcile with LibreChat's own transactions.
    """

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0

    def __add__(self, other: UsageTotals) -> UsageTotals:
        return UsageTotals(
            input=self.input + other.input,
            output=self.output + other.output,
            cache_read=self.cache_read + other.cache_read,
            cache_write=self.cache_write + other.cache_write,
        )

    @property
    def total(self) -> int:
        return self.input + self.output


class UsageRecord(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One model call's usage in LibreChat's ``UsageMetadata`` spelling (snake_case, ``agentId``).

    Every field is optional because providers report different subsets; :meth:`totals` decides
    which spelling wins, in LibreChat's order.
    """

    usage_type: str | None = None
    input_tokens: Tokens | None = None
    output_tokens: Tokens | None = None
    total_tokens: Tokens | None = None
    model: str | None = None
    provider: str | None = None
    agent_id: str | None = field(default=None, name="agentId")
    input_token_details: InputTokenDetails | None = None
    output_token_details: OutputTokenDetails | None = None
    cache_creation_input_tokens: Tokens | None = None
    cache_read_input_tokens: Tokens | None = None
    cache_write_tokens: Tokens | None = None
    prompt_tokens: Tokens | None = None
    completion_tokens: Tokens | None = None
    prompt_tokens_details: PromptTokensDetails | None = None

    def totals(self) -> UsageTotals:
        """Normalise to the four buckets.

        The ``or`` chains copy LibreChat's ``||`` on purpose: a provider that reports ``0`` in
        one spelling and the real count in the other is read the way LibreChat reads it.
        """
        itd = self.input_token_details
        ptd = self.prompt_tokens_details
        cache_write = (
            (itd.cache_creation if itd else None)
            or self.cache_creation_input_tokens
            or (itd.cache_write_tokens if itd else None)
            or self.cache_write_tokens
            or (ptd.cache_write_tokens if ptd else None)
            or 0
        )
        cache_read = (
            (itd.cache_read if itd else None)
            or self.cache_read_input_tokens
            or (ptd.cached_tokens if ptd else None)
            or 0
        )
        prompt = self.input_tokens if self.input_tokens is not None else self.prompt_tokens
        completion = (
            self.output_tokens if self.output_tokens is not None else self.completion_tokens
        )
        return UsageTotals(
            input=prompt or 0,
            output=completion or 0,
            cache_read=cache_read,
            cache_write=cache_write,
        )


def sum_usage(records: Iterable[UsageRecord]) -> UsageTotals:
    """Add up a job's collected usage (all models, all calls)."""
    out = UsageTotals()
    for record in records:
        out = out + record.totals()
    return out


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(UsageRecord)
_LIST_DECODER = msgspec.json.Decoder(list[UsageRecord])


def encode_usage(records: UsageRecord | list[UsageRecord]) -> bytes:
    return _ENCODER.encode(records)


def decode_usage(data: bytes | str) -> UsageRecord:
    """Raises: msgspec.DecodeError (not JSON) / msgspec.ValidationError (wrong shape)."""
    return _DECODER.decode(data)


def decode_usage_list(data: bytes | str) -> list[UsageRecord]:
    """Raises: msgspec.DecodeError (not JSON) / msgspec.ValidationError (wrong shape)."""
    return _LIST_DECODER.decode(data)


def usage_from_builtins(obj: Any) -> UsageRecord:
    """Check an already-parsed object (e.g. a job record's ``collectedUsage`` entry).

    Raises: msgspec.ValidationError (wrong shape).
    """
    return msgspec.convert(obj, UsageRecord)
