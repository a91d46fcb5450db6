"""Streaming feature engine: the contract's stateful features, one transaction at a time.

Contract:
* ``add_label(terminal_id, customer_id, tx_ts, is_fraud)`` when a label becomes known (labels
  topic);
* ``update(tx) -> features`` for each transaction in stream order (timestamp, transaction_id);
  the current transaction is part of its own customer windows, as in the batch engine;
* state older than the longest window (plus the label delay for terminals) is evicted, so memory
  is bounded by active customers/terminals x window;
* ``snapshot()`` / ``restore()`` round-trip the whole state, so features after a restart equal
  those of an uninterrupted run; the snapshot is data only (``core.statefile``), and
  ``state()`` / ``from_state()`` give the same document unencoded, to embed in a larger one.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core import contract as c
from core import statefile

SNAPSHOT_FORMAT = "fraud-feature-engine-state"
# Bumped whenever the document's fields change: a file of another version is refused.
SNAPSHOT_VERSION = 4
_REMEDY = "move the snapshot away: the consumer then rebuilds the features from the stream"
_EVICT_EVERY = 10_000  # transactions between eviction sweeps: amortises the sweep cost
# The windows in seconds, and the output names in the contract's order so ``update`` can zip
# them with its values (it runs once per transaction; name formatting there was measurable).
_CUSTOMER_SECS = tuple(c.CUSTOMER_WINDOWS.values())
_TERMINAL_SECS = tuple(c.TERMINAL_WINDOWS.values())
# Which of those windows the high-amount count and the fraud streak use, by position.
_HIGH_REF = list(c.CUSTOMER_WINDOWS).index(c.HIGH_AMOUNT_REFERENCE)
_HIGH = list(c.CUSTOMER_WINDOWS).index(c.HIGH_AMOUNT_WINDOW)
_STREAK = list(c.TERMINAL_WINDOWS).index(c.FRAUD_STREAK_WINDOW)
_ISOLATED_SECS = tuple(c.TERMINAL_WINDOWS[w] for w in c.ISOLATED_FRAUD_WINDOWS)
# The terminal window holding every isolated-fraud window, by position.
_ISOLATED_SPAN = list(c.TERMINAL_WINDOWS).index(
    max(c.ISOLATED_FRAUD_WINDOWS, key=c.TERMINAL_WINDOWS.__getitem__)
)
_CARD_LINK_SECS = c.TERMINAL_WINDOWS[c.CARD_LINK_WINDOW]
_OUTPUT_ORDER = (
    *(c.customer_count(w) for w in c.CUSTOMER_WINDOWS),
    *(c.customer_mean_amount(w) for w in c.CUSTOMER_WINDOWS),
    c.CUSTOMER_SECS_SINCE_PREV,
    c.CUSTOMER_HIGH_AMOUNT_COUNT,
    *(c.terminal_count(w) for w in c.TERMINAL_WINDOWS),
    *(c.terminal_fraud_ratio(w) for w in c.TERMINAL_WINDOWS),
    c.TERMINAL_FRAUD_STREAK,
    c.TERMINAL_STREAK_AGE,
    *(c.terminal_isolated_frauds(w) for w in c.ISOLATED_FRAUD_WINDOWS),
)
if set(_OUTPUT_ORDER) != set(c.STATEFUL_FEATURES) or len(_OUTPUT_ORDER) != len(c.STATEFUL_FEATURES):
    raise ImportError("the streaming engine's outputs differ from contract.STATEFUL_FEATURES")


@dataclass
class _Customer:
    # Times, running amount sums and running counts of high amounts of the customer's
    # transactions; ``head`` skips evicted ones so the prefix sums stay valid without rewriting
    # the lists on every transaction.
    ts: list[int] = field(default_factory=list)
    csum: list[float] = field(default_factory=lambda: [0.0])
    hsum: list[int] = field(default_factory=lambda: [0])
    head: int = 0

    def compact(self, horizon: int) -> None:
        cut = bisect.bisect_right(self.ts, horizon, lo=self.head)
        if cut > len(self.ts) // 2:
            base, high_base = self.csum[cut], self.hsum[cut]
            self.ts = self.ts[cut:]
            self.csum = [x - base for x in self.csum[cut:]]
            self.hsum = [x - high_base for x in self.hsum[cut:]]
            self.head = 0
        else:
            self.head = cut


@dataclass
class _Terminal:
    ts: list[int] = field(default_factory=list)  # labelled transactions' times, sorted
    fraud: list[int] = field(default_factory=list)
    # The card of each fraud, "" for a genuine label: the label's own string is not kept alive.
    cards: list[str] = field(default_factory=list)


@dataclass
class _CardFrauds:
    ts: list[int] = field(default_factory=list)  # the card's known frauds' times, sorted
    terminals: list[str] = field(default_factory=list)

    def linked(self, terminal_id: str, since: int, before: int) -> bool:
        """Whether the card has a known fraud at another terminal than ``terminal_id`` at a
        time in [since, before)."""
        ts, terminals = self.ts, self.terminals
        for i in range(bisect.bisect_left(ts, since), len(ts)):
            if ts[i] >= before:
                return False
            if terminals[i] != terminal_id:
                return True
        return False


class StreamingFeatureEngine:
    def __init__(self, label_delay_days: int = c.DEFAULT_LABEL_DELAY_DAYS):
        self.label_delay_days = label_delay_days
        self._delay = label_delay_days * c.SECONDS_PER_DAY
        self._customers: dict[str, _Customer] = {}
        self._terminals: dict[str, _Terminal] = {}
        self._card_frauds: dict[str, _CardFrauds] = {}
        self._watermark = 0
        self._since_evict = 0

    # -- labels --------------------------------------------------------------------------------
    def add_label(self, terminal_id: str, customer_id: str, tx_ts: int, is_fraud: int) -> None:
        term = self._terminals.get(terminal_id)
        if term is None:
            term = self._terminals[terminal_id] = _Terminal()
        fraud = int(is_fraud)
        card = customer_id if fraud else ""
        if not term.ts or tx_ts >= term.ts[-1]:  # labels come about in time order
            term.ts.append(tx_ts)
            term.fraud.append(fraud)
            term.cards.append(card)
        else:
            _insert_sorted(term.ts, tx_ts, (term.fraud, fraud), (term.cards, card))
        if fraud:
            frauds = self._card_frauds.get(customer_id)
            if frauds is None:
                frauds = self._card_frauds[customer_id] = _CardFrauds()
            _insert_sorted(frauds.ts, tx_ts, (frauds.terminals, terminal_id))

    # -- transactions ----------------------------------------------------------------------------
    def update(
        self, customer_id: str, terminal_id: str, ts: int, amount: float
    ) -> dict[str, float]:
        """Features of this transaction (and add it to the customer's state)."""
        cust = self._customers.get(customer_id)
        if cust is None:
            cust = self._customers[customer_id] = _Customer()
        ts_list, csum, hsum = cust.ts, cust.csum, cust.hsum
        prev = ts_list[-1] if len(ts_list) > cust.head else None
        # Each window's first transaction; the current one, appended next, is later than every
        # window's start, so it leaves them where they are.
        lefts = [bisect.bisect_right(ts_list, ts - secs, lo=cust.head) for secs in _CUSTOMER_SECS]
        ref = lefts[_HIGH_REF]
        prior_n = len(ts_list) - ref
        high = prior_n > 0 and amount * prior_n > c.HIGH_AMOUNT_CUT * (csum[-1] - csum[ref])
        ts_list.append(ts)
        csum.append(csum[-1] + amount)
        hsum.append(hsum[-1] + high)
        right = len(ts_list)
        high_count = float(hsum[right] - hsum[lefts[_HIGH]])
        total = csum[right]
        counts: list[float] = []
        means: list[float] = []
        for left in lefts:
            count = right - left
            counts.append(float(count))
            means.append((total - csum[left]) / count)
        gap = c.MAX_GAP_SECONDS if prev is None else min(ts - prev, c.MAX_GAP_SECONDS)

        term = self._terminals.get(terminal_id)
        end = ts - self._delay
        t_counts: list[float] = []
        ratios: list[float] = []
        known: list[int] = []
        streak = age = 0
        isolated = [0.0] * len(_ISOLATED_SECS)
        if term is None:
            t_counts = [0.0] * len(_TERMINAL_SECS)
            ratios = [0.0] * len(_TERMINAL_SECS)
        else:
            t_ts, fraud = term.ts, term.fraud
            hi = bisect.bisect_left(t_ts, end)
            los = [bisect.bisect_left(t_ts, end - secs, hi=hi) for secs in _TERMINAL_SECS]
            for lo in los:
                count = hi - lo
                known.append(sum(fraud[lo:hi]))
                t_counts.append(float(count))
                ratios.append(known[-1] / count if count else 0.0)
            start = _streak_start(t_ts, fraud, los[_STREAK], hi)
            streak = hi - start
            age = ts - t_ts[start] if streak else 0
            if known[_ISOLATED_SPAN]:
                self._count_isolated(
                    term, terminal_id, end, los[_ISOLATED_SPAN], known[_ISOLATED_SPAN], isolated
                )

        if ts > self._watermark:
            self._watermark = ts
        self._since_evict += 1
        if self._since_evict >= _EVICT_EVERY:
            self.evict()
        return dict(
            zip(
                _OUTPUT_ORDER,
                (
                    *counts,
                    *means,
                    float(gap),
                    high_count,
                    *t_counts,
                    *ratios,
                    float(streak),
                    float(age),
                    *isolated,
                ),
                strict=True,
            )
        )

    def _count_isolated(
        self, term: _Terminal, terminal_id: str, end: int, lo: int, n: int, out: list[float]
    ) -> None:
        """Add each isolated one of the ``n`` frauds among the terminal's labels from ``lo`` on
        (known before ``end``) to the ``out`` count of every window it is in."""
        t_ts, fraud, cards = term.ts, term.fraud, term.cards
        j = lo - 1
        for _ in range(n):
            j = fraud.index(1, j + 1)  # frauds are rare: jump between them in C
            frauds = self._card_frauds[cards[j]]
            if frauds.linked(terminal_id, t_ts[j] - _CARD_LINK_SECS, end):
                continue
            for k, secs in enumerate(_ISOLATED_SECS):
                if t_ts[j] >= end - secs:
                    out[k] += 1.0

    def evict(self) -> None:
        """Drop state no window can reach any more (relative to the newest time seen)."""
        self._since_evict = 0
        cust_horizon = self._watermark - c.MAX_GAP_SECONDS
        for key in [k for k, v in self._customers.items() if v.ts[-1] <= cust_horizon]:
            del self._customers[key]
        for cust in self._customers.values():
            cust.compact(cust_horizon)
        term_horizon = self._watermark - self._delay - max(c.TERMINAL_WINDOWS.values())
        for key, term in list(self._terminals.items()):
            cut = bisect.bisect_left(term.ts, term_horizon)
            if cut == len(term.ts):
                del self._terminals[key]
            elif cut:
                del term.ts[:cut], term.fraud[:cut], term.cards[:cut]
        # A fraud links those up to CARD_LINK_WINDOW after it, in the longest window.
        card_horizon = term_horizon - _CARD_LINK_SECS
        for key, frauds in list(self._card_frauds.items()):
            cut = bisect.bisect_left(frauds.ts, card_horizon)
            if cut == len(frauds.ts):
                del self._card_frauds[key]
            elif cut:
                del frauds.ts[:cut], frauds.terminals[:cut]

    # -- state -------------------------------------------------------------------------------
    @property
    def size(self) -> dict[str, int]:
        return {
            "customers": len(self._customers),
            "terminals": len(self._terminals),
            "cards_with_frauds": len(self._card_frauds),
        }

    def snapshot(self) -> bytes:
        """The whole state as a data-only document (``restore`` takes it back)."""
        return statefile.dumps(self.state())

    @classmethod
    def restore(cls, blob: bytes, where: str = "feature snapshot") -> StreamingFeatureEngine:
        """The engine ``snapshot()`` saved; ``where`` names the source in errors."""
        return cls.from_state(
            statefile.loads(blob, SNAPSHOT_FORMAT, SNAPSHOT_VERSION, where, _REMEDY), where
        )

    def state(self) -> dict[str, Any]:
        """The whole state as JSON-ready data, stamped with its format and version.

        The lists in it are the engine's own (copying them would double the cost of a
        snapshot, which the consumer takes in its scoring loop): encode it before the next
        ``update``/``add_label``.
        """
        customers = self._customers.values()
        terminals = self._terminals.values()
        body = {
            "label_delay_days": self.label_delay_days,
            "watermark": self._watermark,
            "since_evict": self._since_evict,
            "customers": {
                "ids": list(self._customers),
                "heads": [v.head for v in customers],
                "ts": [v.ts for v in customers],
                # Each customer's len(ts) + 1 sums, concatenated: bit-exact, and the JSON
                # numbers would be most of the encoding time.
                "csum": statefile.pack_floats(v.csum for v in customers),
                "hsum": [v.hsum for v in customers],
            },
            "terminals": {
                "ids": list(self._terminals),
                "ts": [v.ts for v in terminals],
                "fraud": [v.fraud for v in terminals],
                "cards": [v.cards for v in terminals],
            },
            "card_frauds": {
                "ids": list(self._card_frauds),
                "ts": [v.ts for v in self._card_frauds.values()],
                "terminals": [v.terminals for v in self._card_frauds.values()],
            },
        }
        return statefile.stamp(SNAPSHOT_FORMAT, SNAPSHOT_VERSION, body)

    @classmethod
    def from_state(
        cls, state: Mapping[str, Any], where: str = "feature state"
    ) -> StreamingFeatureEngine:
        """The engine ``state()`` described; a malformed one raises ``StateFileError``."""
        statefile.check(state, SNAPSHOT_FORMAT, SNAPSHOT_VERSION, where, _REMEDY)
        with statefile.reading(where, SNAPSHOT_FORMAT, _REMEDY):
            eng = cls(int(state["label_delay_days"]))
            eng._watermark = int(state["watermark"])
            eng._since_evict = int(state["since_evict"])
            eng._customers = _customers_from(state["customers"])
            eng._terminals = _terminals_from(state["terminals"])
            eng._card_frauds = _card_frauds_from(state["card_frauds"])
            missing = {k for t in eng._terminals.values() for k in t.cards if k} - set(
                eng._card_frauds
            )
            if missing:
                raise ValueError(
                    f"terminals: frauds of cards missing from card_frauds: {sorted(missing)[:5]}"
                )
        return eng


def _streak_start(t_ts: list[int], fraud: list[int], lo: int, hi: int) -> int:
    """Where the run of frauds among labelled transactions [lo, hi) later than the latest genuine
    one begins (``hi``: no such fraud); labels tied in time with that genuine one are not later,
    whatever their order in the lists."""
    j = hi - 1
    while j >= lo and fraud[j]:
        j -= 1
    if j < lo:
        return lo
    return bisect.bisect_right(t_ts, t_ts[j], lo=j, hi=hi)


def _customers_from(raw: Mapping[str, Any]) -> dict[str, _Customer]:
    ids, heads = raw["ids"], raw["heads"]
    ts = statefile.int_lists(raw["ts"], "customers.ts")
    highs = statefile.int_lists(raw["hsum"], "customers.hsum")
    sums = statefile.unpack_floats(raw["csum"])
    if not len(ids) == len(heads) == len(ts):
        raise ValueError(f"customers: {len(ids)} ids, {len(heads)} heads, {len(ts)} ts lists")
    if len(sums) != sum(len(t) for t in ts) + len(ts):
        raise ValueError(f"customers: {len(sums)} sums for {len(ts)} ts lists")
    if len(highs) != len(ts) or any(len(h) != len(t) + 1 for h, t in zip(highs, ts, strict=True)):
        raise ValueError("customers: every hsum list must be one longer than its ts list")
    customers = {}
    start = 0
    for key, head, times, high in zip(ids, heads, ts, highs, strict=True):
        if type(head) is not int or not 0 <= head <= len(times):
            raise ValueError(f"customer {key!r}: head {head!r} outside 0..{len(times)}")
        end = start + len(times) + 1
        customers[key] = _Customer(times, sums[start:end], high, head)
        start = end
    return customers


def _terminals_from(raw: Mapping[str, Any]) -> dict[str, _Terminal]:
    ids = raw["ids"]
    ts = statefile.int_lists(raw["ts"], "terminals.ts")
    fraud = statefile.int_lists(raw["fraud"], "terminals.fraud")
    cards = statefile.str_lists(raw["cards"], "terminals.cards")
    if not len(ids) == len(ts) == len(fraud) == len(cards) or any(
        not len(t) == len(f) == len(k) for t, f, k in zip(ts, fraud, cards, strict=True)
    ):
        raise ValueError("terminals: ids, ts, fraud and cards lists differ in length")
    return {key: _Terminal(t, f, k) for key, t, f, k in zip(ids, ts, fraud, cards, strict=True)}


def _card_frauds_from(raw: Mapping[str, Any]) -> dict[str, _CardFrauds]:
    ids = raw["ids"]
    ts = statefile.int_lists(raw["ts"], "card_frauds.ts")
    terminals = statefile.str_lists(raw["terminals"], "card_frauds.terminals")
    if not len(ids) == len(ts) == len(terminals) or any(
        len(t) != len(k) for t, k in zip(ts, terminals, strict=True)
    ):
        raise ValueError("card_frauds: ids, ts and terminals lists differ in length")
    return {key: _CardFrauds(t, k) for key, t, k in zip(ids, ts, terminals, strict=True)}


def _insert_sorted(ts: list[int], at: int, *columns: tuple[list[Any], Any]) -> None:
    """Insert ``at`` into the sorted ``ts``, after its equals, and each value at the same place
    of its column."""
    i = bisect.bisect_right(ts, at)
    ts.insert(i, at)
    for column, value in columns:
        column.insert(i, value)
