package kv

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Retry bounds. A conflict means another transaction won the race for the
// same keys; backing off with jitter lets the winner finish and keeps the
// losers from colliding again in lockstep.
const (
	// MaxAttempts is how many times Transact runs a transaction that keeps
	// conflicting before it returns ErrRetryLimit.
	MaxAttempts = 20
	// RetryBackoffMin is the backoff before the second attempt.
	RetryBackoffMin = time.Millisecond
	// RetryBackoffMax caps the backoff between attempts; the backoff doubles
	// from RetryBackoffMin up to it.
	RetryBackoffMax = 100 * time.Millisecond
)

// Retryable reports whether err means the transaction may simply be run
// again: today, a conflict.
func Retryable(err error) bool { return errors.Is(err, ErrConflict) }

// Retry runs attempt until it returns an error that is not Retryable, up to
// MaxAttempts times, sleeping with jittered exponential backoff between
// attempts. attempt receives the attempt number, from 1. Backends implement
// DB.Transact with it; it is exported so that a backend outside this module
// retries the same way.
func Retry(ctx context.Context, attempt func(n int) error) error {
	backoff := RetryBackoffMin
	var err error
	for n := 1; n <= MaxAttempts; n++ {
		if cerr := ctx.Err(); cerr != nil {
			if err != nil {
				return errors.Join(cerr, err)
			}
			return cerr
		}
		err = attempt(n)
		if err == nil || !Retryable(err) {
			return err
		}
		if n == MaxAttempts {
			break
		}
		// Jitter in [backoff/2, backoff]. math/rand is seeded by the
		// simulation executor, so this stays deterministic there.
		d := backoff/2 + time.Duration(rand.Int64N(int64(backoff/2)+1))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(ctx.Err(), err)
		case <-t.C:
		}
		backoff *= 2
		if backoff > RetryBackoffMax {
			backoff = RetryBackoffMax
		}
	}
	return fmt.Errorf("%w after %d attempts (kv.MaxAttempts): %w", ErrRetryLimit, MaxAttempts, err)
}
