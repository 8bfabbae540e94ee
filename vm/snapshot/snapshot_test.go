package snapshot

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

func testMeta() Metadata {
	return Metadata{
		Backend: "sim", BackendVersion: "1", Arch: "amd64", CPUModel: "sim-cpu",
		VCPUs: 2, MemoryMiB: 128, GuestAgentVersion: "kelpie-guest test", GuestProtocol: 1,
	}
}

func testSections() []Section {
	return []Section{{Name: "vmstate", Data: []byte("cpu registers")}, {Name: "memory", Data: bytes.Repeat([]byte{0xAB}, 1000)}}
}

func mustEncode(t testing.TB) []byte {
	t.Helper()
	b, err := Encode(testMeta(), testSections(), 0)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// reseal recomputes the checksum of a blob whose body was edited, so a test
// reaches the check it targets instead of the checksum.
func reseal(b []byte) []byte {
	body := len(b) - ChecksumBytes
	sum := sha256.Sum256(b[:body])
	copy(b[body:], sum[:])
	return b
}

func TestRoundTrip(t *testing.T) {
	b := mustEncode(t)
	s, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if s.Meta != testMeta() {
		t.Errorf("meta = %+v, want %+v", s.Meta, testMeta())
	}
	if len(s.Sections) != 2 {
		t.Fatalf("%d sections, want 2", len(s.Sections))
	}
	for i, want := range testSections() {
		if s.Sections[i].Name != want.Name || !bytes.Equal(s.Sections[i].Data, want.Data) {
			t.Errorf("section %d = %q/%d bytes, want %q/%d", i, s.Sections[i].Name, len(s.Sections[i].Data), want.Name, len(want.Data))
		}
	}
	if d, ok := s.Section("memory"); !ok || len(d) != 1000 {
		t.Errorf("Section(memory) = %d bytes, %v", len(d), ok)
	}
	if _, ok := s.Section("disk"); ok {
		t.Error("Section(disk) found in a blob without one")
	}
	m, err := DecodeMetadata(b)
	if err != nil || m != testMeta() {
		t.Errorf("DecodeMetadata = %+v, %v", m, err)
	}
}

func TestEncodeDeterministic(t *testing.T) {
	if !bytes.Equal(mustEncode(t), mustEncode(t)) {
		t.Error("two encodings of the same snapshot differ")
	}
}

func TestDecodeRejects(t *testing.T) {
	good := mustEncode(t)
	mod := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	cases := []struct {
		name  string
		blob  []byte
		is    error
		field string
	}{
		{"empty", nil, ErrCorrupt, "header"},
		{"short", good[:30], ErrCorrupt, "header"},
		{"magic", mod(func(b []byte) []byte { b[0] = 'X'; return b }), ErrCorrupt, "magic"},
		{"version", mod(func(b []byte) []byte { b[8] = 9; return reseal(b) }), ErrUnsupportedVersion, "version"},
		{"flags", mod(func(b []byte) []byte { b[10] = 1; return reseal(b) }), ErrCorrupt, "flags"},
		{"reserved", mod(func(b []byte) []byte { b[20] = 1; return reseal(b) }), ErrCorrupt, "reserved"},
		{"meta too long", mod(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[12:], MaxMetadataBytes+1); return reseal(b) }), ErrCorrupt, "metadata length"},
		{"meta past end", mod(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[12:], 4000); return reseal(b) }), ErrCorrupt, "metadata"},
		{"too many sections", mod(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[16:], MaxSections+1); return reseal(b) }), ErrCorrupt, "section count"},
		{"section length huge", mod(func(b []byte) []byte {
			// section[0] is "vmstate": length follows 1+7 bytes of name.
			binary.LittleEndian.PutUint64(b[HeaderBytes+8:], 1<<63)
			return reseal(b)
		}), ErrTooLarge, "section[0].length"},
		{"section length past end", mod(func(b []byte) []byte {
			binary.LittleEndian.PutUint64(b[HeaderBytes+8:], 1<<20)
			return reseal(b)
		}), ErrCorrupt, `section[0] "vmstate"`},
		{"section length short", mod(func(b []byte) []byte {
			binary.LittleEndian.PutUint64(b[HeaderBytes+8:], 3)
			return reseal(b)
		}), ErrCorrupt, "trailer"},
		{"bad section name", mod(func(b []byte) []byte { b[HeaderBytes+1] = 'V'; return reseal(b) }), ErrCorrupt, "section[0].name"},
		{"zero-length name", mod(func(b []byte) []byte { b[HeaderBytes] = 0; return reseal(b) }), ErrCorrupt, "section[0].name length"},
		{"trailing bytes", append(append([]byte(nil), good...), 0), ErrCorrupt, "trailer"},
		{"flipped data bit", mod(func(b []byte) []byte { b[len(b)-ChecksumBytes-1] ^= 1; return b }), ErrCorrupt, "checksum"},
		{"truncated", good[:len(good)-1], ErrCorrupt, ""},
		{"bad metadata field", mod(func(b []byte) []byte {
			// The metadata starts after the table: 24 + (1+7+8) + (1+6+8).
			binary.LittleEndian.PutUint16(b[HeaderBytes+31:], MaxFieldBytes+1)
			return reseal(b)
		}), ErrCorrupt, "metadata.Backend"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := Decode(c.blob)
			if err == nil {
				t.Fatalf("Decode accepted it: %+v", s.Meta)
			}
			if !errors.Is(err, c.is) {
				t.Errorf("error %v does not match %v", err, c.is)
			}
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error %T is not a *DecodeError", err)
			}
			if c.field != "" && de.Field != c.field {
				t.Errorf("field = %q, want %q (%v)", de.Field, c.field, err)
			}
		})
	}
}

func TestSizeLimits(t *testing.T) {
	good := mustEncode(t)
	if _, err := DecodeMax(good, int64(len(good)-1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("DecodeMax below the blob size: %v, want ErrTooLarge", err)
	}
	if _, err := DecodeMax(good, int64(len(good))); err != nil {
		t.Errorf("DecodeMax at exactly the blob size: %v", err)
	}
	if _, err := Encode(testMeta(), testSections(), int64(len(good)-1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Encode over the limit: %v, want ErrTooLarge", err)
	}
	many := make([]Section, MaxSections+1)
	for i := range many {
		many[i] = Section{Name: strings.Repeat("s", i+1)}
	}
	if _, err := Encode(testMeta(), many, 0); err == nil || !strings.Contains(err.Error(), "MaxSections") {
		t.Errorf("Encode with %d sections: %v", len(many), err)
	}
	if _, err := Encode(testMeta(), []Section{{Name: "a"}, {Name: "a"}}, 0); err == nil {
		t.Error("Encode accepted duplicate sections")
	}
	bad := testMeta()
	bad.Backend = ""
	bad.VCPUs = 0
	if _, err := Encode(bad, nil, 0); err == nil || !strings.Contains(err.Error(), "Backend") || !strings.Contains(err.Error(), "VCPUs") {
		t.Errorf("Encode with bad metadata: %v", err)
	}
}

func TestCompatible(t *testing.T) {
	m := testMeta()
	host := Host{Backend: "sim", BackendVersion: "1", Arch: "amd64", CPUModel: "sim-cpu", VCPUs: 2, MemoryMiB: 128, MinGuestProtocol: 1, MaxGuestProtocol: 1}
	if err := Compatible(m, host); err != nil {
		t.Fatalf("identical host: %v", err)
	}
	cases := map[string]func(h *Host){
		"backend":         func(h *Host) { h.Backend = "firecracker" },
		"backend version": func(h *Host) { h.BackendVersion = "2" },
		"architecture":    func(h *Host) { h.Arch = "arm64" },
		"CPU model":       func(h *Host) { h.CPUModel = "other" },
		"vCPUs":           func(h *Host) { h.VCPUs = 4 },
		"MiB of memory":   func(h *Host) { h.MemoryMiB = 256 },
		"protocol":        func(h *Host) { h.MinGuestProtocol, h.MaxGuestProtocol = 2, 3 },
	}
	for want, f := range cases {
		h := host
		f(&h)
		err := Compatible(m, h)
		if !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s mismatch: %v", want, err)
		}
	}
}

// BenchmarkDecode measures verifying a 64 MiB blob, most of it the checksum.
func BenchmarkDecode(b *testing.B) {
	blob, err := Encode(testMeta(), []Section{{Name: "memory", Data: make([]byte, 64<<20)}}, 0)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(blob)))
	for b.Loop() {
		if _, err := Decode(blob); err != nil {
			b.Fatal(err)
		}
	}
}

func TestBuilderMatchesEncode(t *testing.T) {
	secs := testSections()
	b, err := NewBuilder(testMeta(), []SectionSize{{"vmstate", int64(len(secs[0].Data))}, {"memory", int64(len(secs[1].Data))}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range secs {
		if n := copy(b.Section(i), s.Data); n != len(s.Data) {
			t.Fatalf("section %d holds %d bytes, want %d", i, n, len(s.Data))
		}
	}
	if got := b.Finish(); !bytes.Equal(got, mustEncode(t)) {
		t.Error("a built blob differs from the encoded one")
	}
	if _, err := NewBuilder(testMeta(), []SectionSize{{"memory", -1}}, 0); !errors.Is(err, ErrTooLarge) {
		t.Errorf("negative size: %v", err)
	}
	if _, err := NewBuilder(testMeta(), []SectionSize{{"memory", MaxBlobBytes}}, 0); !errors.Is(err, ErrTooLarge) {
		t.Errorf("a section as large as the whole limit: %v", err)
	}
	if _, err := NewBuilder(testMeta(), []SectionSize{{"a", 1 << 62}, {"b", 1 << 62}}, 0); !errors.Is(err, ErrTooLarge) {
		t.Errorf("sizes that would overflow: %v", err)
	}
}
