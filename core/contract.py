"""The feature contract: the ONE place where the raw schema and every feature are defined.

Preprocessing (TFT), training, batch scoring, the streaming consumer and the drift monitor all
import names from here; nothing else spells a field or feature name.

Two kinds of features:
* stateful window aggregates (``STATEFUL_FEATURES``): need history, so the feature engines
  (``core.features.batch`` and ``core.features.stream``) compute them, and they are
  inputs of the served model;
* stateless derived features (``derived_features``): pure functions of one row of model inputs,
  computed *inside* the TF graph (TFT ``preprocessing_fn`` and so inside the exported SavedModel),
  so serving can never compute them differently from training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# --- raw transaction schema ------------------------------------------------------------------

TRANSACTION_ID = "transaction_id"
TIMESTAMP = "timestamp"
CUSTOMER_ID = "customer_id"
TERMINAL_ID = "terminal_id"
AMOUNT = "amount"
LABEL = "is_fraud"

# Extra columns the simulator writes; the platform never needs them to train or score.
FRAUD_PATTERN = "fraud_pattern"
LABEL_AVAILABLE_AT = "label_available_at"

RAW_FIELDS: tuple[str, ...] = (TRANSACTION_ID, TIMESTAMP, CUSTOMER_ID, TERMINAL_ID, AMOUNT, LABEL)
# A live transaction has everything but the label.
LIVE_FIELDS: tuple[str, ...] = tuple(f for f in RAW_FIELDS if f != LABEL)
STRING_FIELDS: tuple[str, ...] = (TRANSACTION_ID, CUSTOMER_ID, TERMINAL_ID)

# Canonical wire/storage form of a timestamp: UTC, second resolution, 'Z' suffix. Readers
# normalise any ISO-8601 input to it, and the in-graph calendar features parse exactly this.
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

DEFAULT_LABEL_DELAY_DAYS = 7

# --- value bounds (batch validation and the stream apply the same ones) ------------------------

# Largest valid amount, in currency units. Far above any single card payment (issuers cap those
# in the millions at most), yet the model's float32 input holds it with a relative error below
# 6e-8 (float32 turns anything above 3.4e38, e.g. 1e39, into inf), and the feature engines'
# float64 window sums stay finite and exact to the cent up to 10,000 such amounts in a window
# (two amounts of 1e308 would sum to inf).
MAX_AMOUNT = 1e9
# Longest id (transaction, customer, terminal), in characters. Card networks' ids are tens of
# characters; the bound keeps one transaction's decision message far below the 1 MB a Kafka
# broker accepts by default, so no accepted transaction can make an output the broker refuses.
MAX_ID_CHARS = 256
# Valid event times: [MIN_TIMESTAMP, MAX_TIMESTAMP), epoch seconds UTC. One stray year 9999
# transaction would move a partition's event time past every window and label delay at once;
# the range keeps every accepted time inside pandas' datetime64[ns] range (1677-2262) and the
# in-graph calendar's 4-digit years.
MIN_TIMESTAMP_TEXT = "2000-01-01T00:00:00Z"
MAX_TIMESTAMP_TEXT = "2100-01-01T00:00:00Z"
MIN_TIMESTAMP = 946_684_800  # MIN_TIMESTAMP_TEXT, inclusive
MAX_TIMESTAMP = 4_102_444_800  # MAX_TIMESTAMP_TEXT, exclusive

# --- stateful window aggregates --------------------------------------------------------------

SECONDS_PER_DAY = 86_400

# Customer windows are (t - w, t] over the customer's transactions up to and including the current
# one, in stream order (timestamp, transaction_id). 1h catches card-testing bursts.
CUSTOMER_WINDOWS: dict[str, int] = {
    "1h": 3_600,
    "1d": SECONDS_PER_DAY,
    "7d": 7 * SECONDS_PER_DAY,
    "30d": 30 * SECONDS_PER_DAY,
}
# Terminal windows are [t - delay - w, t - delay) over the terminal's *labelled* transactions whose
# label was available at t: only what the scorer could know at scoring time.
TERMINAL_WINDOWS: dict[str, int] = {
    "1d": SECONDS_PER_DAY,
    "7d": 7 * SECONDS_PER_DAY,
    "30d": 30 * SECONDS_PER_DAY,
}
# Gaps longer than the longest window are capped: state older than that is evicted, so batch and
# streaming agree, and "no previous transaction" reads as "a long time ago".
MAX_GAP_SECONDS = max(CUSTOMER_WINDOWS.values())


def customer_count(window: str) -> str:
    return f"customer_tx_count_{window}"


def customer_mean_amount(window: str) -> str:
    return f"customer_mean_amount_{window}"


def terminal_count(window: str) -> str:
    return f"terminal_tx_count_{window}"


def terminal_fraud_ratio(window: str) -> str:
    return f"terminal_fraud_ratio_{window}"


CUSTOMER_SECS_SINCE_PREV = "customer_secs_since_prev_tx"

# A stolen card's spending shows as several payments far above the card's own habit within days,
# while one large payment alone is common: count them. "Far above" is more than
# HIGH_AMOUNT_FACTOR times the mean of the customer's payments in the HIGH_AMOUNT_REFERENCE
# window before it (with no such payment, nothing counts as high).
HIGH_AMOUNT_FACTOR = 3.0
HIGH_AMOUNT_REFERENCE = "30d"
HIGH_AMOUNT_WINDOW = "7d"
# The comparison's cut sits a hair above the factor: cent amounts often sit exactly at 3x a mean
# (3.00 after 1.00), and there the batch engine's prefix sums and the stream's running sums,
# which differ in the last bits, would decide the tie differently.
HIGH_AMOUNT_CUT = HIGH_AMOUNT_FACTOR * (1 + 1e-6)
CUSTOMER_HIGH_AMOUNT_COUNT = f"customer_high_amount_count_{HIGH_AMOUNT_WINDOW}"
# A compromised terminal turns every payment on it into fraud, so its latest known labels are an
# unbroken run of frauds, where a stolen card passing by leaves one fraud among genuine payments.
# The run is counted over the terminal's labelled transactions in the FRAUD_STREAK_WINDOW ending
# label_delay before now: the frauds later than its latest known genuine transaction.
FRAUD_STREAK_WINDOW = "30d"
TERMINAL_FRAUD_STREAK = f"terminal_fraud_streak_{FRAUD_STREAK_WINDOW}"
# How long ago that run began: a compromise is found and fixed after a while, and the payments on
# a terminal fixed within the label delay are genuine while its known labels still read fraud.
TERMINAL_STREAK_AGE = "terminal_secs_since_fraud_streak_start"
# A compromised terminal's frauds come from cards that were defrauded nowhere else, where a stolen
# card's frauds spread over the terminals it passes: a terminal's known fraud whose card also has
# a known fraud at another terminal says little about the terminal. Counted over the terminal
# windows of ISOLATED_FRAUD_WINDOWS: the known frauds whose card has no known fraud at another
# terminal from CARD_LINK_WINDOW before it up to label_delay before now.
CARD_LINK_WINDOW = "30d"
ISOLATED_FRAUD_WINDOWS: tuple[str, ...] = ("7d", "30d")


def terminal_isolated_frauds(window: str) -> str:
    return f"terminal_isolated_fraud_count_{window}"


STATEFUL_FEATURES: tuple[str, ...] = (
    *(customer_count(w) for w in CUSTOMER_WINDOWS),
    *(customer_mean_amount(w) for w in CUSTOMER_WINDOWS),
    CUSTOMER_SECS_SINCE_PREV,
    CUSTOMER_HIGH_AMOUNT_COUNT,
    *(terminal_count(w) for w in TERMINAL_WINDOWS),
    *(terminal_fraud_ratio(w) for w in TERMINAL_WINDOWS),
    TERMINAL_FRAUD_STREAK,
    TERMINAL_STREAK_AGE,
    *(terminal_isolated_frauds(w) for w in ISOLATED_FRAUD_WINDOWS),
)

# --- model inputs: what the serving signature takes ------------------------------------------

# Identifiers are deliberately not model inputs: the model must not memorise cards or terminals;
# they key the feature state outside the model instead.
RAW_MODEL_INPUTS: tuple[str, ...] = (TIMESTAMP, AMOUNT)
MODEL_INPUTS: tuple[str, ...] = (*RAW_MODEL_INPUTS, *STATEFUL_FEATURES)


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: str  # "string" | "float32"
    description: str


def _describe(name: str) -> str:
    for w in CUSTOMER_WINDOWS:
        if name == customer_count(w):
            return f"customer's transactions in the last {w}, current one included"
        if name == customer_mean_amount(w):
            return f"mean amount of the customer's transactions in the last {w}"
    for w in TERMINAL_WINDOWS:
        if name == terminal_count(w):
            return f"terminal's labelled transactions in the {w} ending label_delay before now"
        if name == terminal_fraud_ratio(w):
            return f"fraud share of the terminal's labelled transactions in that {w} window"
        if name == terminal_isolated_frauds(w):
            return (
                f"terminal's known frauds in that {w} window whose card has no known fraud at "
                f"another terminal from {CARD_LINK_WINDOW} before it"
            )
    return {
        TIMESTAMP: "transaction time, canonical UTC ISO-8601 (YYYY-MM-DDTHH:MM:SSZ)",
        AMOUNT: "transaction amount, >= 0",
        CUSTOMER_SECS_SINCE_PREV: "seconds since the customer's previous transaction (capped)",
        CUSTOMER_HIGH_AMOUNT_COUNT: (
            f"customer's transactions in the last {HIGH_AMOUNT_WINDOW}, current one included, of "
            f"more than {HIGH_AMOUNT_FACTOR:g}x the mean of the customer's transactions in the "
            f"{HIGH_AMOUNT_REFERENCE} before each"
        ),
        TERMINAL_FRAUD_STREAK: (
            "terminal's known frauds later than its latest known genuine transaction, in the "
            f"{FRAUD_STREAK_WINDOW} ending label_delay before now"
        ),
        TERMINAL_STREAK_AGE: "seconds since the first fraud of that streak (0 without a streak)",
    }[name]


INPUT_SPECS: tuple[InputSpec, ...] = tuple(
    InputSpec(n, "string" if n == TIMESTAMP else "float32", _describe(n)) for n in MODEL_INPUTS
)

# --- stateless derived features (in-graph) ---------------------------------------------------

IS_WEEKEND = "tx_is_weekend"
IS_NIGHT = "tx_is_night"
LOG_AMOUNT = "log_amount"
AMOUNT_TO_HISTORY = "amount_to_customer_history_30d"
NIGHT_HOURS = (22, 6)  # [22:00, 06:00) UTC counts as night

# Features fed to the network as they are (already bounded 0..1); all others are z-scored by TFT.
UNSCALED_FEATURES: tuple[str, ...] = (
    IS_WEEKEND,
    IS_NIGHT,
    *(terminal_fraud_ratio(w) for w in TERMINAL_WINDOWS),
)


def _days_from_civil(tf, y, m, d):
    """Days since 1970-01-01 for a proleptic Gregorian date (H. Hinnant's algorithm), in TF ops
    so the weekday is computed inside the serving graph without a date library."""
    y = y - tf.cast(m <= 2, tf.int64)
    era = tf.math.floordiv(y, 400)
    yoe = y - era * 400
    mp = tf.math.floormod(m + 9, 12)
    doy = tf.math.floordiv(153 * mp + 2, 5) + d - 1
    doe = yoe * 365 + tf.math.floordiv(yoe, 4) - tf.math.floordiv(yoe, 100) + doy
    return era * 146_097 + doe - 719_468


def derived_features(inputs: dict) -> dict:
    """Every stateless transform, in TF ops, from a dict of model-input tensors (shape [batch]).

    Runs inside TFT's preprocessing_fn, hence inside the exported serving graph.
    """
    import tensorflow as tf

    ts = tf.reshape(inputs[TIMESTAMP], [-1])

    def part(start: int, length: int):
        return tf.strings.to_number(tf.strings.substr(ts, start, length), out_type=tf.int64)

    days = _days_from_civil(tf, part(0, 4), part(5, 2), part(8, 2))
    weekday = tf.math.floormod(days + 3, 7)  # Monday = 0; 1970-01-01 was a Thursday
    hour = part(11, 2)
    night_start, night_end = NIGHT_HOURS
    amount = tf.cast(tf.reshape(inputs[AMOUNT], [-1]), tf.float32)
    count30 = tf.cast(tf.reshape(inputs[customer_count("30d")], [-1]), tf.float32)
    mean30 = tf.cast(tf.reshape(inputs[customer_mean_amount("30d")], [-1]), tf.float32)
    # The 30-day mean includes the current transaction; take it out to compare the amount with
    # the customer's own history. With no history the ratio is neutral (1).
    prev_n = count30 - 1.0
    prev_mean = tf.math.divide_no_nan(count30 * mean30 - amount, prev_n)
    ratio = tf.where(prev_n > 0.5, (amount + 1.0) / (tf.maximum(prev_mean, 0.0) + 1.0), 1.0)
    out = {
        IS_WEEKEND: tf.cast(weekday >= 5, tf.float32),
        IS_NIGHT: tf.cast((hour >= night_start) | (hour < night_end), tf.float32),
        LOG_AMOUNT: tf.math.log1p(tf.maximum(amount, 0.0)),
        AMOUNT_TO_HISTORY: tf.math.log(ratio),
    }
    for name in STATEFUL_FEATURES:
        value = tf.cast(tf.reshape(inputs[name], [-1]), tf.float32)
        if name.startswith("terminal_fraud_ratio"):
            out[name] = value
        else:
            # Counts, amounts and gaps are heavy-tailed: log first, then TFT z-scores them.
            out[f"log_{name}"] = tf.math.log1p(tf.maximum(value, 0.0))
    return out


def is_night(epoch_seconds: np.ndarray) -> np.ndarray:
    """``IS_NIGHT`` of ``derived_features``, from epoch seconds (UTC), for code that watches the
    stream outside the graph (the drift monitor and its training reference); a test keeps the
    two definitions equal."""
    import numpy as np

    t = np.floor(np.asarray(epoch_seconds, dtype=np.float64))
    hour = np.mod(t, SECONDS_PER_DAY) // 3600
    night_start, night_end = NIGHT_HOURS
    return (hour >= night_start) | (hour < night_end)


def transformed_feature_names() -> tuple[str, ...]:
    """Names the model sees, in a stable order (the keys of ``derived_features``)."""
    names = [IS_WEEKEND, IS_NIGHT, LOG_AMOUNT, AMOUNT_TO_HISTORY]
    for name in STATEFUL_FEATURES:
        names.append(name if name.startswith("terminal_fraud_ratio") else f"log_{name}")
    return tuple(names)


# --- model outputs and decisions ---------------------------------------------------------------

SCORE_OUTPUT = "fraud_probability"
SERVING_SIGNATURE = "serving_default"
APPROVE, REVIEW, BLOCK = "approve", "review", "block"
DECISIONS: tuple[str, ...] = (APPROVE, REVIEW, BLOCK)


# A score that is no number (NaN, which TF Serving writes as null, or an infinity) never
# approves: the transaction goes to a person, and the consumer counts it.
FAILSAFE_DECISION = REVIEW


def decide(score: float, review_threshold: float, block_threshold: float) -> str:
    if not math.isfinite(score):
        return FAILSAFE_DECISION
    if score >= block_threshold:
        return BLOCK
    if score >= review_threshold:
        return REVIEW
    return APPROVE
