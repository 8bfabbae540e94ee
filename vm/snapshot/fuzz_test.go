package snapshot

import (
	"bytes"
	"errors"
	"testing"
)

// checkDecodeResult asserts what must hold for any input: no panic (the
// fuzzer catches those), an error that is a *DecodeError matching
// ErrCorrupt, or a snapshot that re-encodes to exactly the input.
func checkDecodeResult(t *testing.T, data []byte, s *Snapshot, err error) {
	t.Helper()
	if err != nil {
		var de *DecodeError
		if !errors.As(err, &de) || !errors.Is(err, ErrCorrupt) {
			t.Fatalf("decode error %T %v is not a *DecodeError matching ErrCorrupt", err, err)
		}
		if de.Offset < 0 || de.Offset > int64(len(data)) {
			t.Fatalf("decode error offset %d outside the %d-byte input: %v", de.Offset, len(data), err)
		}
		return
	}
	again, err := Encode(s.Meta, s.Sections, 0)
	if err != nil {
		t.Fatalf("a decoded snapshot does not re-encode: %v", err)
	}
	if !bytes.Equal(again, data) {
		t.Fatalf("decode/encode is not the identity: %d bytes in, %d out", len(data), len(again))
	}
}

func addSeeds(f *testing.F) {
	good, err := Encode(testMeta(), testSections(), 0)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	empty, err := Encode(testMeta(), nil, 0)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(empty)
	f.Add(good[:HeaderBytes])
	f.Add([]byte(Magic))
}

// FuzzDecode feeds arbitrary bytes to Decode.
func FuzzDecode(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Decode(data)
		checkDecodeResult(t, data, s, err)
		if _, merr := DecodeMetadata(data); err == nil && merr != nil {
			t.Fatalf("Decode accepts what DecodeMetadata refuses: %v", merr)
		}
	})
}

// FuzzDecodeResealed fixes the checksum of each input before decoding, so
// the fuzzer explores the section table and metadata parsers instead of
// stopping at the checksum almost every time.
func FuzzDecodeResealed(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) >= HeaderBytes+ChecksumBytes {
			data = reseal(append([]byte(nil), data...))
		}
		s, err := Decode(data)
		checkDecodeResult(t, data, s, err)
	})
}
