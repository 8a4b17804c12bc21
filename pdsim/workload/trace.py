"""Request traces in LLMServingSim's JSONL format.

One JSON object per line: `input_toks`, `output_toks`, `arrival_time_ns`, and optionally
`hash_ids` (prefix-block ids, as in Mooncake's traces) with `hash_block_tokens` (tokens per id,
512 when absent), or `input_tok_ids`, the prompt's token ids, which give such ids: one per full
16-token block (vLLM's default block size), equal for equal chains of blocks as vLLM's block hash
is. `output_tok_ids` are accepted and ignored (only lengths matter). Traces can have 100k+ lines,
so the per-line path stays lean.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pdsim.config.base import MAX_TOKENS
from pdsim.errors import PdsimError, TraceError, json_kind, json_shown, parse_json
from pdsim.outputs import atomic_path


@dataclass(slots=True)
class TraceRequest:
    request_id: int  # 0-based order of the request in the file, before sorting
    input_toks: int
    output_toks: int
    arrival_time_ns: int
    hash_ids: tuple[int, ...] = ()  # prefix-block ids (Mooncake `hash_ids`), each covering hash_block_tokens tokens
    hash_block_tokens: int = 0  # tokens per hash id (512 in Mooncake's traces); 0 = no prefix information


DEFAULT_HASH_BLOCK_TOKENS = 512  # Mooncake's block size, assumed when a trace gives hash_ids alone
TOKEN_ID_BLOCK_TOKENS = 16  # vLLM's default block size: input_tok_ids become one prefix id per this many
MAX_TOKEN_ID = 2**32 - 1  # above every tokenizer's vocabulary; below where Python's int hash wraps (2^61 - 1)
MAX_HASH_ID = 2**64 - 1  # a 64-bit block hash, the widest id a trace gives (the engine's keys take it unwrapped)


def checked_token_ids(tokens: object, where: str) -> list[int]:
    """A prompt's token ids as a file gives them: a list of whole numbers from 0 to MAX_TOKEN_ID."""
    if type(tokens) is not list or not set(map(type, tokens)) <= {int}:  # bool is no token id
        raise TraceError(f"{where}: field 'input_tok_ids': expected a list of integers, got {json_shown(tokens)}")
    if tokens and not (0 <= min(tokens) and max(tokens) <= MAX_TOKEN_ID):
        raise TraceError(f"{where}: field 'input_tok_ids': expected token ids from 0 to {MAX_TOKEN_ID}, got "
                         f"{min(tokens) if min(tokens) < 0 else max(tokens)}")
    return tokens


def block_chain_ids(tokens: list[int], block_size: int, chains: dict[int, int]) -> tuple[int, ...]:
    """An id per full block of `tokens`, the same for the same chain of blocks (vLLM's block hash chains each
    block's ids to its parent's): `chains` numbers the chains seen so far, across the prompts given it."""
    ids, parent = [], -1
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = chains.setdefault(hash((parent, *tokens[start:start + block_size])), len(chains))
        ids.append(parent)
    return tuple(ids)


def token_count(value: object, where: str, key: str, least: int = 1, error: type[PdsimError] = TraceError) -> int:
    """A token count as a file gives it: a whole number from `least` to MAX_TOKENS (an integral float too)."""
    # type() rather than isinstance: bool is an int subclass, and `true` is no length.
    if type(value) is float and value.is_integer():  # NaN/inf fail is_integer
        value = int(value)
    if type(value) is not int or not least <= value <= MAX_TOKENS:
        raise error(f"{where}: field {key!r}: expected an integer from {least} to {MAX_TOKENS:.0e}, "
                    f"got {json_shown(value)}")
    return value


def _length(value: object, key: str, where: str) -> int:
    return token_count(value, where, key)


# pdsim holds every request of a run in memory (about 1.6 KB each with its results: 450 MB for 200,000
# closed-loop requests, measured): a count past this is refused up front instead of exhausting the machine.
MAX_REQUESTS = 10_000_000


def check_request_count(n: int, what: str) -> None:
    if n > MAX_REQUESTS:
        raise PdsimError(f"{what}: {n:,} requests; pdsim runs at most {MAX_REQUESTS:,} in one simulation "
                         f"(each held in memory, about 1.6 KB)")


# Past ~4e9 s a float64 clock resolves less than 1 us, and step times would vanish in it; the
# bound still admits Unix-epoch timestamps (~1.7e18 ns).
MAX_ARRIVAL_NS = 4 * 10**18
# Arrival times are whole nanoseconds: an engine step that ends less than this before an arrival ends at it as
# far as the trace can tell (a replayed log's request, picked up at a step's end, comes back within half a
# nanosecond of the replay's own step end, on either side).
ARRIVAL_RESOLUTION_S = 1e-9


def _arrival(value: object, where: str) -> int:
    if type(value) is int:
        if 0 <= value <= MAX_ARRIVAL_NS:
            return value
    elif type(value) is float and math.isfinite(value) and 0 <= value <= MAX_ARRIVAL_NS:
        return round(value)
    if type(value) in (int, float) and value > MAX_ARRIVAL_NS:
        raise TraceError(f"{where}: field 'arrival_time_ns': expected at most {MAX_ARRIVAL_NS:.0e} ns "
                         f"(~127 years), got {json_shown(value)}")
    raise TraceError(f"{where}: field 'arrival_time_ns': expected a finite number >= 0 (ns), got {json_shown(value)}")


def _hash_block_tokens(obj: dict, where: str) -> int:
    block = obj.get("hash_block_tokens", DEFAULT_HASH_BLOCK_TOKENS)
    if type(block) is not int or block < 1:
        raise TraceError(f"{where}: field 'hash_block_tokens': expected a positive integer, got {json_shown(block)}")
    return block


def _hash_ids(obj: dict, input_toks: int, where: str) -> tuple[tuple[int, ...], int]:
    block = _hash_block_tokens(obj, where)
    ids = checked_hash_ids(obj["hash_ids"], input_toks, block, where)
    return ids, (block if ids else 0)


def _prompt_token_ids(obj: dict, input_toks: int, where: str) -> list[int]:
    tokens = checked_token_ids(obj["input_tok_ids"], where)
    if len(tokens) != input_toks:
        raise TraceError(f"{where}: field 'input_tok_ids': {len(tokens)} ids, but input_toks is {input_toks}")
    return tokens


def hash_blocks(tokens: int, block: int) -> int:
    """The prefix blocks of `block` tokens that a prompt of `tokens` tokens spans (its last one partly)."""
    return -(-tokens // block)


def checked_hash_ids(ids: object, input_toks: int, block: int, where: str) -> tuple[int, ...]:
    """A trace's `hash_ids`: integers from 0 to MAX_HASH_ID, at most hash_blocks(input_toks, block) of them
    (Mooncake's traces have exactly that many); more would cover tokens the prompt does not have."""
    if type(ids) is not list or not all(type(x) is int and 0 <= x <= MAX_HASH_ID for x in ids):
        raise TraceError(f"{where}: field 'hash_ids': expected a list of integers from 0 to {MAX_HASH_ID} (2^64 - 1), "
                         f"got {json_shown(ids)}")
    most = hash_blocks(input_toks, block)
    if len(ids) > most:
        raise TraceError(f"{where}: field 'hash_ids': {len(ids)} ids of {block} tokens each, but {input_toks} input "
                         f"tokens make at most {most} blocks")
    return tuple(ids)


def check_requests(trace: Iterable[TraceRequest]) -> list[TraceRequest]:
    """What the engine needs of a list handed to simulate() directly (the readers give it already): whole
    lengths >= 1, arrival times in range, one request per id, prefix ids within their prompts. Errors name
    the request by its place in the list. Returns the requests as a list (a generator is read once, here)."""
    if not isinstance(trace, Iterable) or isinstance(trace, (str, bytes, dict)):
        raise TraceError(f"trace: expected a list of TraceRequest, got {trace!r:.80}")
    trace = list(trace)
    seen: set[int] = set()
    for i, r in enumerate(trace):
        if not isinstance(r, TraceRequest):
            raise TraceError(f"trace[{i}]: expected a TraceRequest, got {r!r:.80}")
        rid, inp, out, arr = r.request_id, r.input_toks, r.output_toks, r.arrival_time_ns
        if (type(rid) is int and type(inp) is int and type(out) is int and type(arr) is int  # the readers' kind
                and 1 <= inp <= MAX_TOKENS and 1 <= out <= MAX_TOKENS and 0 <= arr <= MAX_ARRIVAL_NS
                and rid not in seen and _plain_prefix_ids(r)):
            seen.add(rid)
            continue
        _refuse_request(i, r, seen)  # numpy's integers and prefix ids are checked there; bool and 10.0 refused
        seen.add(rid)
    return trace


def _plain_prefix_ids(r: TraceRequest) -> bool:
    """Whether r's prefix ids are of the readers' kind: none, or a tuple of ints from 0 to MAX_HASH_ID within
    its prompt's blocks of a whole hash_block_tokens (r's input_toks an int already)."""
    ids, block = r.hash_ids, r.hash_block_tokens
    if type(ids) is not tuple:
        return False
    return not ids or (type(block) is int and block >= 1 and len(ids) <= hash_blocks(r.input_toks, block)
                       and set(map(type, ids)) == {int} and 0 <= min(ids) and max(ids) <= MAX_HASH_ID)


def _refuse_request(i: int, r: TraceRequest, seen: set[int]) -> None:
    """Raise the TraceError that says what check_requests found wrong with r (returns if nothing is)."""
    where = f"trace[{i}] (request_id {r.request_id!r})"
    rid = r.request_id
    if not isinstance(rid, numbers.Integral) or isinstance(rid, bool) or rid in seen:
        raise TraceError(f"{where}: expected a request_id that is an integer no other request has")
    for key in ("input_toks", "output_toks"):
        value = getattr(r, key)
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not 1 <= value <= MAX_TOKENS:
            raise TraceError(f"{where}: field {key!r}: expected an integer from 1 to {MAX_TOKENS:.0e}, got {value!r}")
    arrival = r.arrival_time_ns
    if not isinstance(arrival, numbers.Real) or isinstance(arrival, bool):
        raise TraceError(f"{where}: field 'arrival_time_ns': expected a finite number >= 0 (ns), got {arrival!r}")
    _arrival(arrival if type(arrival) is int else float(arrival), where)
    ids, block = r.hash_ids, r.hash_block_tokens
    if not isinstance(ids, (tuple, list)) or not all(isinstance(x, numbers.Integral) and not isinstance(x, bool)
                                                     and x >= 0 for x in ids):
        raise TraceError(f"{where}: field 'hash_ids': expected a tuple of integers >= 0, got {ids!r}")
    if ids:
        if not isinstance(block, numbers.Integral) or isinstance(block, bool) or block < 1:
            raise TraceError(f"{where}: field 'hash_block_tokens': expected a positive integer with hash_ids, "
                             f"got {block!r}")
        checked_hash_ids([int(x) for x in ids], r.input_toks, block, where)


# Every key a line may carry; any other is named in a note, since a misspelt optional key (`hash_id`)
# would otherwise turn its feature off without a word.
TRACE_KEYS = frozenset({"input_toks", "output_toks", "arrival_time_ns", "input_tok_ids", "output_tok_ids",
                        "hash_ids", "hash_block_tokens"})


def load_trace(path: str | Path, max_requests: int | None = None) -> list[TraceRequest]:
    """Requests sorted by arrival time (ties keep file order).

    With `max_requests`, the earliest-arriving `max_requests` requests are kept.
    """
    return read_trace(path, max_requests)[0]


def read_trace(path: str | Path, max_requests: int | None = None) -> tuple[list[TraceRequest], list[str]]:
    """load_trace's requests, and notes on what in the file was not read (unknown keys)."""
    path = Path(path)
    unknown: dict[str, int] = {}
    if max_requests is not None and max_requests < 1:
        raise TraceError(f"max_requests must be >= 1, got {max_requests}")
    f = _open_trace(path)
    requests: list[TraceRequest] = []
    chains: dict[int, int] = {}  # input_tok_ids' block chains (block_chain_ids)
    loads = json.loads
    append = requests.append
    with f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = loads(line)
            except (RecursionError, ValueError) as e:
                _not_json(e, line, f"{path}:{lineno}")
                raise
            try:
                inp = obj["input_toks"]
                out = obj["output_toks"]
                arr = obj["arrival_time_ns"]
            except KeyError as e:
                raise TraceError(f"{path}:{lineno}: missing field {e.args[0]!r}") from None
            except TypeError:
                raise TraceError(
                    f"{path}:{lineno}: expected a JSON object, got {json_kind(obj)}"
                ) from None
            check_repeated_keys(line, obj, f"{path}:{lineno}")
            if len(obj) > 3:
                for key in obj.keys() - TRACE_KEYS:
                    unknown[key] = unknown.get(key, 0) + 1
            n = len(requests)
            # Fast path for the common all-int line; the checkers handle the rest and errors.
            if (
                type(inp) is int
                and type(out) is int
                and type(arr) is int
                and 0 < inp <= MAX_TOKENS
                and 0 < out <= MAX_TOKENS
                and 0 <= arr <= MAX_ARRIVAL_NS
                and "hash_ids" not in obj
                and "input_tok_ids" not in obj
                and "hash_block_tokens" not in obj
            ):
                append(TraceRequest(n, inp, out, arr))
            else:
                append(_checked_request(n, obj, inp, out, arr, f"{path}:{lineno}", chains))

    if not requests:
        raise TraceError(f"{path}: the trace has no requests")
    requests.sort(key=lambda r: r.arrival_time_ns)  # list.sort is stable
    if max_requests is not None:
        del requests[max_requests:]
    notes = []
    if chains:
        notes.append(f"input_tok_ids read as prefix-block ids ({TOKEN_ID_BLOCK_TOKENS} tokens each, chained as vLLM "
                     "hashes blocks)")
    if unknown:
        found = ", ".join(f"{key!r} ({n:,} line(s))" for key, n in sorted(unknown.items()))
        notes.append(f"key(s) not in the trace format, ignored: {found}; its keys are {', '.join(sorted(TRACE_KEYS))}")
    return requests, notes


def _open_trace(path: Path) -> BinaryIO:
    try:
        return path.open("rb")  # bytes: json.loads decodes them itself, and faster
    except FileNotFoundError:
        raise TraceError(f"{path}: trace file not found") from None
    except OSError as e:
        raise TraceError(f"{path}: cannot read trace ({e.strerror})") from None


def check_repeated_keys(line: bytes, obj: dict, where: str) -> None:
    """Refuse a JSON line that gives a key twice (at any depth), which json.loads reads as the last one
    silently. Cheap on every line: each key and each string value of a line adds two quotes, so a
    repeated key adds quotes the object does not hold; the line is parsed again (to name the key) only
    when its quotes are not twice its keys and string values (nested objects or lists, or an escaped
    quote, too: then nothing may be wrong)."""
    quotes = line.count(b'"')
    if quotes != 2 * len(obj) and quotes != 2 * (len(obj) + list(map(type, obj.values())).count(str)):
        parse_json(line, where, TraceError)


def _not_json(e: Exception, line: bytes, where: str) -> None:
    """Raise the TraceError that says why json.loads refused `line` (returns only if it cannot tell)."""
    if isinstance(e, json.JSONDecodeError):
        # The column on the record's own line: an error at its end (a missing "}") falls after the line's newline,
        # where json counts a second line from column 1.
        column = min(e.pos, len(line.rstrip(b"\r\n").decode("utf-8", "replace"))) + 1
        raise TraceError(f"{where}: not valid JSON ({e.msg} at column {column})") from None
    if isinstance(e, UnicodeDecodeError):
        raise TraceError(f"{where}: not valid UTF-8 ({e.reason})") from None
    parse_json(line, where, TraceError)  # names the problem


def _checked_request(n: int, obj: dict, inp: object, out: object, arr: object, where: str,
                     chains: dict[int, int]) -> TraceRequest:
    """A request off the fast path: every field checked (errors name `where`), prefix ids read (hash_ids, else
    input_tok_ids' block chains, numbered in `chains`)."""
    input_toks = _length(inp, "input_toks", where)
    ids, block = (), 0
    # Every field a line gives is checked, the ones the prefix ids do not come from too (hash_ids win).
    tokens = _prompt_token_ids(obj, input_toks, where) if "input_tok_ids" in obj else None
    if "hash_ids" in obj:
        ids, block = _hash_ids(obj, input_toks, where)
    elif tokens is not None:
        ids, block = block_chain_ids(tokens, TOKEN_ID_BLOCK_TOKENS, chains), TOKEN_ID_BLOCK_TOKENS
    if "hash_block_tokens" in obj and "hash_ids" not in obj:  # read by no prefix id, but not silently wrong either
        _hash_block_tokens(obj, where)
    return TraceRequest(n, input_toks, _length(out, "output_toks", where), _arrival(arr, where), ids, block)


def write_trace(path: str | Path, requests: Iterable[TraceRequest]) -> None:
    """Write atomically (a temporary file beside it, then os.replace): a reader never sees half a trace."""
    with atomic_path(Path(path)) as tmp:
        with tmp.open("w", encoding="utf-8") as f:
            for r in requests:
                extra = ""
                if r.hash_ids:
                    extra = (f', "hash_ids": [{", ".join(map(str, r.hash_ids))}], '
                              f'"hash_block_tokens": {r.hash_block_tokens}')
                f.write(
                    f'{{"input_toks": {r.input_toks}, "output_toks": {r.output_toks}, '
                    f'"arrival_time_ns": {r.arrival_time_ns}{extra}}}\n'
                )
