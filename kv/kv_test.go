package kv_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/kelpie-go/kelpie/kv"
)

func TestPrefixRange(t *testing.T) {
	for _, c := range []struct {
		prefix, begin, end string
	}{
		{"", "", "\xff"},
		{"a", "a", "b"},
		{"a\xff", "a\xff", "b"},
		{"a\xfe\xff\xff", "a\xfe\xff\xff", "a\xff"},
	} {
		r, err := kv.PrefixRange([]byte(c.prefix))
		if err != nil {
			t.Fatalf("PrefixRange(%q): %v", c.prefix, err)
		}
		if string(r.Begin) != c.begin || string(r.End) != c.end {
			t.Errorf("PrefixRange(%q) = %s, want [%q, %q)", c.prefix, r, c.begin, c.end)
		}
	}
	if _, err := kv.PrefixRange([]byte("\xff\xff")); !errors.Is(err, kv.ErrInvalidKey) {
		t.Fatalf("PrefixRange(0xff 0xff) = %v, want ErrInvalidKey", err)
	}
}

func TestRangeHelpers(t *testing.T) {
	r := kv.KeyRange{Begin: []byte("b"), End: []byte("d")}
	for key, want := range map[string]bool{"a": false, "b": true, "c\xff": true, "d": false} {
		if got := r.Contains([]byte(key)); got != want {
			t.Errorf("%s contains %q = %v", r, key, got)
		}
	}
	if !r.Intersects(kv.KeyRange{Begin: []byte("c"), End: []byte("z")}) || r.Intersects(kv.KeyRange{Begin: []byte("d"), End: []byte("z")}) {
		t.Error("Intersects is wrong at the half-open end")
	}
	one := kv.SingleKey([]byte("k"))
	if !one.Contains([]byte("k")) || one.Contains([]byte("k\x00")) || one.Contains([]byte("j")) {
		t.Errorf("SingleKey(k) = %s", one)
	}
	if !(kv.KeyRange{Begin: []byte("b"), End: []byte("b")}).Empty() {
		t.Error("[b, b) is not empty")
	}
}

func TestCheckErrorsNameTheLimit(t *testing.T) {
	err := kv.CheckKey(make([]byte, kv.KeyLimit+1))
	var le *kv.LimitError
	if !errors.As(err, &le) || le.Size != kv.KeyLimit+1 || !errors.Is(err, kv.ErrKeyTooLarge) || !errors.Is(err, kv.ErrTooLarge) {
		t.Fatalf("CheckKey over the limit = %v", err)
	}
	if !strings.Contains(err.Error(), "kv.KeyLimit") || !strings.Contains(err.Error(), "10000") {
		t.Fatalf("error %q does not name kv.KeyLimit and its value", err)
	}
	err = kv.CheckValue(make([]byte, kv.ValueLimit+1))
	if !errors.Is(err, kv.ErrValueTooLarge) || !strings.Contains(err.Error(), "kv.ValueLimit") {
		t.Fatalf("CheckValue over the limit = %v", err)
	}
	if err := kv.CheckRange(kv.KeyRange{Begin: []byte("b"), End: []byte("a")}); !errors.Is(err, kv.ErrInvalidRange) {
		t.Fatalf("CheckRange(begin > end) = %v", err)
	}
	if err := kv.CheckRangeOptions(kv.RangeOptions{Limit: -1}); !errors.Is(err, kv.ErrInvalidRange) || !strings.Contains(err.Error(), "Limit") {
		t.Fatalf("CheckRangeOptions(-1) = %v", err)
	}
}

func TestRetry(t *testing.T) {
	ctx := context.Background()
	n := 0
	err := kv.Retry(ctx, func(int) error {
		n++
		if n < 3 {
			return kv.ErrConflict
		}
		return nil
	})
	if err != nil || n != 3 {
		t.Fatalf("Retry = %v after %d attempts, want success on the third", err, n)
	}
	boom := errors.New("boom")
	n = 0
	if err := kv.Retry(ctx, func(int) error { n++; return boom }); err != boom || n != 1 {
		t.Fatalf("Retry of a non-retryable error = %v after %d attempts", err, n)
	}
	cctx, cancel := context.WithCancel(ctx)
	n = 0
	err = kv.Retry(cctx, func(int) error { n++; cancel(); return kv.ErrConflict })
	if !errors.Is(err, context.Canceled) || !errors.Is(err, kv.ErrConflict) || n != 1 {
		t.Fatalf("Retry canceled during backoff = %v after %d attempts", err, n)
	}
}
