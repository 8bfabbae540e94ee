package simkv

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/kelpie-go/kelpie/kv"
	"github.com/kelpie-go/kelpie/kv/internal/occ"
)

func fill(t *testing.T, db *DB, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if err := db.Transact(context.Background(), func(tx kv.Tx) error {
			return tx.Set([]byte{'k', byte('0' + i)}, bytes.Repeat([]byte{'v'}, 10*(i+1)))
		}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCorruptionBeforeTailIsAnError: damage to a record that is followed
// by more records cannot be a torn write, and must not be repaired by
// throwing data away.
func TestCorruptionBeforeTailIsAnError(t *testing.T) {
	d := NewDisk(DiskOptions{})
	db, err := Open(d)
	if err != nil {
		t.Fatal(err)
	}
	fill(t, db, 3)
	db.Close()
	d.durable[recordHeader+3] ^= 0x40 // inside the first record's payload
	if _, err := Open(d); !errors.Is(err, kv.ErrCorrupt) {
		t.Fatalf("open with a damaged first record = %v, want kv.ErrCorrupt", err)
	}
}

// TestTornTailShapes cuts the log at every length inside its last record
// and checks that reopening keeps exactly the records before it.
func TestTornTailShapes(t *testing.T) {
	d := NewDisk(DiskOptions{})
	db, err := Open(d)
	if err != nil {
		t.Fatal(err)
	}
	fill(t, db, 3)
	db.Close()
	whole := append([]byte(nil), d.durable...)
	// Find where the last record starts.
	off, starts := 0, []int{}
	for off < len(whole) {
		_, n, err := readRecord(whole[off:])
		if err != nil {
			t.Fatal(err)
		}
		starts = append(starts, off)
		off += n
	}
	lastStart := starts[len(starts)-1]
	for cut := lastStart + 1; cut < len(whole); cut++ {
		d.durable = append([]byte(nil), whole[:cut]...)
		db, err := Open(d)
		if err != nil {
			t.Fatalf("cut at %d: %v", cut, err)
		}
		rec := db.Recovery()
		if rec.Records != 2 || rec.TornBytes != cut-lastStart || len(d.durable) != lastStart {
			t.Fatalf("cut at %d: recovery %+v, log %d bytes; want 2 records, %d torn bytes, log %d", cut, rec, len(d.durable), cut-lastStart, lastStart)
		}
		db.Close()
	}
}

// TestDecodeNeverPanics feeds random and mutated payloads to the decoder.
func TestDecodeNeverPanics(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	good, err := encodeRecord(7, []occ.Mutation{
		{Op: occ.OpSet, Key: []byte("k"), Value: []byte("v")},
		{Op: occ.OpClearRange, Key: []byte("a"), End: []byte("b")},
		{Op: occ.OpClear, Key: []byte("z")},
	})
	if err != nil {
		t.Fatal(err)
	}
	payload := good[recordHeader:]
	v, muts, err := decodePayload(payload)
	if err != nil || v != 7 || len(muts) != 3 {
		t.Fatalf("round trip: %d, %d mutations, %v", v, len(muts), err)
	}
	for i := 0; i < 20000; i++ {
		var p []byte
		if i%2 == 0 {
			p = make([]byte, r.IntN(64))
			for j := range p {
				p[j] = byte(r.Uint32())
			}
		} else {
			p = append([]byte(nil), payload...)
			p[r.IntN(len(p))] = byte(r.Uint32())
			p = p[:r.IntN(len(p)+1)]
		}
		_, _, _ = decodePayload(p) // must return, not panic
		_, _, _ = readRecord(p)
	}
}
