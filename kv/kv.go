// Package kv is Kelpie's ordered, transactional key-value interface.
//
// The model is FoundationDB's. Keys and values are byte strings; keys are
// ordered bytewise, and the user key space is everything below "\xff" (keys
// that start with 0xff are reserved, as in FoundationDB, and rejected). All
// access goes through transactions. A transaction reads a consistent snapshot
// taken at its read version, sees its own writes, buffers its mutations, and
// commits them atomically. Commits are serializable: a transaction fails to
// commit with ErrConflict when a key or range it read was written by another
// transaction that committed after its read version. Reads are therefore part
// of the conflict set, which is what makes "read a fencing epoch, compare,
// write" safe inside one transaction. DB.Transact runs a function in a
// transaction and retries it on conflict, a bounded number of times with
// backoff, so the function must be safe to run more than once (its only
// effects should be through the transaction it is given). Sizes are bounded
// like FoundationDB's: keys at KeyLimit, values at ValueLimit, a
// transaction's mutations at TransactionLimit; going past one is an error
// that wraps ErrTooLarge and names the limit.
//
// Backends live in subpackages: memkv (in memory), boltkv (bbolt, the
// embedded default) and simkv (the simulated store with crash semantics and
// faults). kvtest is the conformance suite every backend passes.
package kv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
)

// Limits, as in FoundationDB. They are part of the interface: every backend
// enforces them with the same errors, so code that works on one backend
// works on all.
const (
	// KeyLimit is the largest key, in bytes.
	KeyLimit = 10_000
	// ValueLimit is the largest value, in bytes.
	ValueLimit = 100_000
	// TransactionLimit bounds the bytes of one transaction, counted as
	// FoundationDB counts them: the keys and values it sets, the keys and
	// range bounds it clears, and the keys and range bounds it reads (its
	// conflict set).
	TransactionLimit = 10_000_000
	// RangeResultLimit bounds the bytes (keys plus values) one GetRange call
	// returns. A range read that would return more fails with ErrTooLarge;
	// read large ranges in pages with RangeOptions.Limit.
	RangeResultLimit = 10_000_000
)

// Sentinel errors. Backends wrap them with detail; branch on them with
// errors.Is.
var (
	// ErrConflict means the transaction read something that another
	// transaction changed before it could commit. Retrying is safe: nothing
	// of the failed attempt was applied. DB.Transact retries it.
	ErrConflict = errors.New("kv: transaction conflict")
	// ErrTooLarge is wrapped by every size-limit error (see LimitError).
	ErrTooLarge = errors.New("kv: too large")
	// ErrKeyTooLarge: a key is longer than KeyLimit. It wraps ErrTooLarge.
	ErrKeyTooLarge = fmt.Errorf("key too large: %w", ErrTooLarge)
	// ErrValueTooLarge: a value is longer than ValueLimit. It wraps ErrTooLarge.
	ErrValueTooLarge = fmt.Errorf("value too large: %w", ErrTooLarge)
	// ErrTransactionTooLarge: a transaction would grow past
	// TransactionLimit. It wraps ErrTooLarge.
	ErrTransactionTooLarge = fmt.Errorf("transaction too large: %w", ErrTooLarge)
	// ErrRangeTooLarge: a range read would return more than
	// RangeResultLimit bytes. It wraps ErrTooLarge.
	ErrRangeTooLarge = fmt.Errorf("range result too large: %w", ErrTooLarge)
	// ErrInvalidKey: a key is in the reserved space (starts with 0xff).
	ErrInvalidKey = errors.New("kv: invalid key")
	// ErrInvalidRange: a range's end is before its begin, or a bound is
	// invalid, or range options are out of bounds.
	ErrInvalidRange = errors.New("kv: invalid range")
	// ErrRetryLimit: DB.Transact gave up after MaxAttempts conflicts. It is
	// returned joined with the last ErrConflict.
	ErrRetryLimit = errors.New("kv: transaction retry limit reached")
	// ErrTransactionDone: the transaction was used after its function
	// returned.
	ErrTransactionDone = errors.New("kv: transaction used after it ended")
	// ErrClosed: the database is closed (or, in simulation, belongs to a
	// node incarnation that was killed).
	ErrClosed = errors.New("kv: database closed")
	// ErrCommitFailed: the storage could not make the commit durable and the
	// commit was not applied (a failed write or fsync). Nothing of it is
	// visible, now or after a restart. It is not retried by Transact: it
	// reports a storage failure the caller should see.
	ErrCommitFailed = errors.New("kv: commit failed")
	// ErrIO: the storage failed to read or write.
	ErrIO = errors.New("kv: storage I/O error")
	// ErrCorrupt: stored data failed its integrity check.
	ErrCorrupt = errors.New("kv: storage corrupt")
)

// LimitError reports a size past one of the stated limits. It unwraps to
// the specific sentinel (ErrKeyTooLarge, ...), which wraps ErrTooLarge.
type LimitError struct {
	What  string // what was too large: "key", "value", "transaction", "range result"
	Size  int    // its size in bytes
	Limit int    // the limit in bytes
	Err   error  // the sentinel
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("kv: %s is %d bytes, the limit is %d (%s)", e.What, e.Size, e.Limit, limitName(e.Err))
}

// Unwrap returns the sentinel.
func (e *LimitError) Unwrap() error { return e.Err }

func limitName(err error) string {
	switch err {
	case ErrKeyTooLarge:
		return "kv.KeyLimit"
	case ErrValueTooLarge:
		return "kv.ValueLimit"
	case ErrTransactionTooLarge:
		return "kv.TransactionLimit"
	case ErrRangeTooLarge:
		return "kv.RangeResultLimit"
	}
	return "limit"
}

// Version orders commits. Every backend gives each committed write
// transaction a version greater than all before it; a transaction reads the
// state as of its read version.
type Version uint64

// KeyValue is one entry of a range read.
type KeyValue struct {
	Key   []byte
	Value []byte
}

// KeyRange is the half-open range [Begin, End).
type KeyRange struct {
	Begin []byte
	End   []byte
}

// RangeOptions shape a range read.
type RangeOptions struct {
	// Limit is the most entries to return; 0 means no limit (the result is
	// still bounded by RangeResultLimit bytes). Must not be negative.
	Limit int
	// Reverse returns entries in descending key order, starting at the end
	// of the range.
	Reverse bool
}

// ReadTx is the reading half of a transaction. Values returned are the
// caller's to keep and modify.
type ReadTx interface {
	// Get returns the value of key and whether it exists.
	Get(key []byte) (value []byte, ok bool, err error)
	// GetRange returns the entries in r, in key order (or reverse order), up
	// to opts.Limit. Only the part of the range actually returned (up to the
	// last key, when the limit cut it short) joins the conflict set.
	GetRange(r KeyRange, opts RangeOptions) ([]KeyValue, error)
	// ReadVersion is the version of the snapshot this transaction reads.
	ReadVersion() Version
}

// Tx is a read-write transaction. Mutations are buffered and applied
// atomically at commit; reads see them.
type Tx interface {
	ReadTx
	// Set sets key to value.
	Set(key, value []byte) error
	// Clear removes key.
	Clear(key []byte) error
	// ClearRange removes every key in r.
	ClearRange(r KeyRange) error
	// OnCommit registers fn to run once, after the transaction commits, with
	// the commit's version. It does not run for attempts that fail. A
	// transaction with no mutations commits at its read version.
	OnCommit(fn func(Version))
}

// DB is a transactional key-value database.
type DB interface {
	// Transact runs fn in a read-write transaction and commits it. If the
	// commit conflicts, fn runs again in a new transaction, up to
	// MaxAttempts times with backoff. An error from fn aborts the
	// transaction (nothing is applied) and is returned as is.
	Transact(ctx context.Context, fn func(tx Tx) error) error
	// ReadTransact runs fn in a read-only transaction on one snapshot.
	ReadTransact(ctx context.Context, fn func(tx ReadTx) error) error
	// Close releases the database. Transactions in flight fail.
	Close() error
}

// CheckKey reports whether key is a valid user key.
func CheckKey(key []byte) error {
	if len(key) > KeyLimit {
		return &LimitError{What: "key", Size: len(key), Limit: KeyLimit, Err: ErrKeyTooLarge}
	}
	if len(key) > 0 && key[0] == 0xff {
		return fmt.Errorf("%w: key %q starts with 0xff, which is reserved", ErrInvalidKey, truncate(key))
	}
	return nil
}

// CheckValue reports whether value is within ValueLimit.
func CheckValue(value []byte) error {
	if len(value) > ValueLimit {
		return &LimitError{What: "value", Size: len(value), Limit: ValueLimit, Err: ErrValueTooLarge}
	}
	return nil
}

// CheckRange reports whether r is a valid range of user keys: Begin <= End,
// Begin a valid key, and End at most "\xff" (the end of the user space).
func CheckRange(r KeyRange) error {
	if err := CheckKey(r.Begin); err != nil {
		return fmt.Errorf("range begin: %w", err)
	}
	if len(r.End) > KeyLimit+1 {
		return &LimitError{What: "range end", Size: len(r.End), Limit: KeyLimit + 1, Err: ErrKeyTooLarge}
	}
	if bytes.Compare(r.End, UserEnd) > 0 {
		return fmt.Errorf("%w: range end %q is past the user key space (ends at \\xff)", ErrInvalidRange, truncate(r.End))
	}
	if bytes.Compare(r.Begin, r.End) > 0 {
		return fmt.Errorf("%w: begin %q is after end %q", ErrInvalidRange, truncate(r.Begin), truncate(r.End))
	}
	return nil
}

// CheckRangeOptions reports whether opts are valid.
func CheckRangeOptions(opts RangeOptions) error {
	if opts.Limit < 0 {
		return fmt.Errorf("%w: RangeOptions.Limit is %d, want 0 (no limit) or more", ErrInvalidRange, opts.Limit)
	}
	return nil
}

// UserEnd is the end of the user key space: every user key is below it.
var UserEnd = []byte{0xff}

// All is the range of every user key.
func All() KeyRange { return KeyRange{Begin: []byte{}, End: []byte{0xff}} }

// PrefixRange is the range of every key that starts with prefix. It fails
// for a prefix that is not a valid key (including one starting with 0xff).
func PrefixRange(prefix []byte) (KeyRange, error) {
	if err := CheckKey(prefix); err != nil {
		return KeyRange{}, fmt.Errorf("prefix: %w", err)
	}
	end := strinc(prefix)
	if end == nil {
		end = []byte{0xff}
	}
	return KeyRange{Begin: append([]byte{}, prefix...), End: end}, nil
}

// strinc returns the first key after every key with prefix p, or nil when
// there is none (p empty or all 0xff).
func strinc(p []byte) []byte {
	i := len(p) - 1
	for i >= 0 && p[i] == 0xff {
		i--
	}
	if i < 0 {
		return nil
	}
	out := append([]byte{}, p[:i+1]...)
	out[i]++
	return out
}

// KeyAfter is the first key after key: key + "\x00". KeyRange{k,
// KeyAfter(k)} is the range holding just k.
func KeyAfter(key []byte) []byte {
	out := make([]byte, len(key)+1)
	copy(out, key)
	return out
}

// SingleKey is the range that holds only key.
func SingleKey(key []byte) KeyRange {
	return KeyRange{Begin: append([]byte{}, key...), End: KeyAfter(key)}
}

// Contains reports whether key is in r.
func (r KeyRange) Contains(key []byte) bool {
	return bytes.Compare(r.Begin, key) <= 0 && bytes.Compare(key, r.End) < 0
}

// Intersects reports whether r and o share a key.
func (r KeyRange) Intersects(o KeyRange) bool {
	return bytes.Compare(r.Begin, o.End) < 0 && bytes.Compare(o.Begin, r.End) < 0
}

// Empty reports whether r holds no key.
func (r KeyRange) Empty() bool { return bytes.Compare(r.Begin, r.End) >= 0 }

func (r KeyRange) String() string {
	return fmt.Sprintf("[%q, %q)", truncate(r.Begin), truncate(r.End))
}

// truncateBytes bounds how much of a key an error message quotes.
const truncateBytes = 64

func truncate(b []byte) []byte {
	if len(b) > truncateBytes {
		return append(append([]byte{}, b[:truncateBytes]...), "..."...)
	}
	return b
}
