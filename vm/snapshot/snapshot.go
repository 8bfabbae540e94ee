// Package snapshot defines Kelpie's VM snapshot blob: one self-describing,
// versioned binary container that carries whatever a backend needs to
// restore a VM (Firecracker's vmstate and memory files, QEMU's migration
// stream, the simulated VM's guest state) together with metadata that lets a
// restore be refused before it is tried.
//
// Layout, all integers little-endian:
//
//	offset  size  field
//	0       8     magic "KELPSNAP"
//	8       2     format version (Version)
//	10      2     flags, must be 0
//	12      4     metadata length M (≤ MaxMetadataBytes)
//	16      4     section count N (≤ MaxSections)
//	20      4     reserved, must be 0
//	24      ...   section table: N × (name length u8, name, data length u64)
//	...     M     metadata (see Metadata)
//	...     ...   section data, in table order
//	end-32  32    SHA-256 of every byte before it
//
// Decode checks the structure first (magic, version, every length, with
// sums computed without overflow, against both the blob's real size and
// MaxBlobBytes, and that nothing trails the checksum), then the checksum,
// then parses the metadata. Every error says what is wrong and where, and
// matches ErrCorrupt, ErrTooLarge or ErrUnsupportedVersion.
//
// Compatible compares a snapshot's metadata with the restoring host; a
// mismatch (another backend or backend version, another architecture or CPU
// model, another VM shape, a guest agent protocol the host does not speak)
// matches ErrIncompatible.
package snapshot

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"unicode/utf8"

	"github.com/kelpie-go/kelpie/vm"
)

// Magic starts every blob.
const Magic = "KELPSNAP"

// Version is the format version this package writes and reads.
const Version = 1

// Layout constants and limits.
const (
	// HeaderBytes is the size of the fixed header.
	HeaderBytes = 24
	// ChecksumBytes is the size of the trailing SHA-256.
	ChecksumBytes = sha256.Size
	// MaxSections bounds the sections of one blob.
	MaxSections = 16
	// MaxSectionNameBytes bounds a section name.
	MaxSectionNameBytes = 32
	// MaxMetadataBytes bounds the encoded metadata.
	MaxMetadataBytes = 4096
	// MaxFieldBytes bounds one metadata string.
	MaxFieldBytes = 256
	// MaxBlobBytes bounds a whole blob: all of the largest guest memory
	// vm allows (vm.MaxMemoryMiB) plus 1 GiB for device state and
	// backend overhead.
	MaxBlobBytes = int64(vm.MaxMemoryMiB)<<20 + 1<<30
)

// Errors callers branch on with errors.Is.
var (
	// ErrCorrupt matches every structural or checksum error from Decode.
	ErrCorrupt = errors.New("snapshot blob is corrupt")
	// ErrTooLarge is returned for blobs, or sections, past the limits.
	ErrTooLarge = errors.New("snapshot blob too large")
	// ErrUnsupportedVersion is returned for a format version this build
	// does not read.
	ErrUnsupportedVersion = errors.New("snapshot format version not supported")
	// ErrIncompatible is returned by Compatible, and by Restore, for a
	// snapshot this host or VM cannot restore.
	ErrIncompatible = errors.New("snapshot incompatible with this host")
)

// DecodeError says what is wrong with a blob and where. It matches
// ErrCorrupt, and also ErrTooLarge or ErrUnsupportedVersion when Kind says so.
type DecodeError struct {
	Offset int64  // byte offset of the problem
	Field  string // what was being read: "magic", "section[2].length"
	Reason string
	kind   error
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("snapshot: decode %s at offset %d: %s", e.Field, e.Offset, e.Reason)
}

// Is matches ErrCorrupt always, and the error's own kind.
func (e *DecodeError) Is(target error) bool {
	return target == ErrCorrupt || (e.kind != nil && target == e.kind)
}

// Section is one named payload, such as "memory" or "vmstate".
type Section struct {
	Name string
	Data []byte
}

// Snapshot is a decoded blob.
type Snapshot struct {
	Meta     Metadata
	Sections []Section
}

// Section returns the data of the section called name.
func (s *Snapshot) Section(name string) ([]byte, bool) {
	for _, sec := range s.Sections {
		if sec.Name == name {
			return sec.Data, true
		}
	}
	return nil, false
}

// Encode builds a blob from meta and sections, refusing (with ErrTooLarge)
// blobs larger than maxBytes before allocating them. maxBytes <= 0 or above
// MaxBlobBytes means MaxBlobBytes.
func Encode(meta Metadata, sections []Section, maxBytes int64) ([]byte, error) {
	layout := make([]SectionSize, len(sections))
	for i, s := range sections {
		layout[i] = SectionSize{Name: s.Name, Size: int64(len(s.Data))}
	}
	b, err := NewBuilder(meta, layout, maxBytes)
	if err != nil {
		return nil, err
	}
	for i, s := range sections {
		copy(b.Section(i), s.Data)
	}
	return b.Finish(), nil
}

// SectionSize announces a section to a Builder.
type SectionSize struct {
	Name string
	Size int64
}

// Builder lays out a blob in one allocation and lets the caller fill each
// section in place, so a backend can read a guest's memory file straight
// into the blob instead of into a buffer that Encode would copy. Fill every
// section, then call Finish.
type Builder struct {
	out     []byte
	offsets []int64 // start of each section in out
	sizes   []int64
}

// NewBuilder validates meta and the layout and allocates the blob, refusing
// (with ErrTooLarge) one larger than maxBytes before allocating it.
// maxBytes <= 0 or above MaxBlobBytes means MaxBlobBytes.
func NewBuilder(meta Metadata, layout []SectionSize, maxBytes int64) (*Builder, error) {
	if maxBytes <= 0 || maxBytes > MaxBlobBytes {
		maxBytes = MaxBlobBytes
	}
	if err := meta.Validate(); err != nil {
		return nil, err
	}
	if len(layout) > MaxSections {
		return nil, fmt.Errorf("snapshot: encode: %d sections, the limit is MaxSections=%d", len(layout), MaxSections)
	}
	md := meta.marshal()
	total := int64(HeaderBytes + len(md) + ChecksumBytes)
	seen := map[string]bool{}
	for i, s := range layout {
		if err := checkSectionName(s.Name); err != nil {
			return nil, fmt.Errorf("snapshot: encode: section[%d]: %v", i, err)
		}
		if seen[s.Name] {
			return nil, fmt.Errorf("snapshot: encode: section %q appears twice", s.Name)
		}
		seen[s.Name] = true
		// Checked before adding, so the sum cannot overflow.
		if s.Size < 0 || s.Size > maxBytes {
			return nil, fmt.Errorf("%w: encode: section %q is %d bytes, the limit is %d", ErrTooLarge, s.Name, s.Size, maxBytes)
		}
		total += int64(1+len(s.Name)+8) + s.Size
		if total > maxBytes {
			return nil, fmt.Errorf("%w: encode: the blob would exceed %d bytes at section %q (%d bytes)", ErrTooLarge, maxBytes, s.Name, s.Size)
		}
	}
	out := make([]byte, 0, total)
	out = append(out, Magic...)
	out = binary.LittleEndian.AppendUint16(out, Version)
	out = binary.LittleEndian.AppendUint16(out, 0)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(md)))
	out = binary.LittleEndian.AppendUint32(out, uint32(len(layout)))
	out = binary.LittleEndian.AppendUint32(out, 0)
	for _, s := range layout {
		out = append(out, byte(len(s.Name)))
		out = append(out, s.Name...)
		out = binary.LittleEndian.AppendUint64(out, uint64(s.Size))
	}
	out = append(out, md...)
	b := &Builder{offsets: make([]int64, len(layout)), sizes: make([]int64, len(layout))}
	off := int64(len(out))
	for i, s := range layout {
		b.offsets[i], b.sizes[i] = off, s.Size
		off += s.Size
	}
	b.out = out[:off]
	return b, nil
}

// Section returns the bytes of section i (in layout order) to fill.
func (b *Builder) Section(i int) []byte {
	start := b.offsets[i]
	return b.out[start : start+b.sizes[i] : start+b.sizes[i]]
}

// Finish appends the checksum and returns the blob. The Builder must not be
// used afterwards.
func (b *Builder) Finish() []byte {
	sum := sha256.Sum256(b.out)
	out := append(b.out, sum[:]...)
	b.out = nil
	return out
}

// Decode parses and verifies a blob of at most MaxBlobBytes. Section data
// aliases blob.
func Decode(blob []byte) (*Snapshot, error) {
	return DecodeMax(blob, MaxBlobBytes)
}

// DecodeMax is Decode with a lower size limit (maxBytes <= 0 or above
// MaxBlobBytes means MaxBlobBytes).
func DecodeMax(blob []byte, maxBytes int64) (*Snapshot, error) {
	snap, _, err := decode(blob, maxBytes, true)
	return snap, err
}

// DecodeMetadata parses only the header, section table and metadata of a
// blob, without verifying the checksum, so a restore can be refused as
// incompatible without hashing gigabytes. Decode must still verify the
// whole blob before it is loaded.
func DecodeMetadata(blob []byte) (Metadata, error) {
	snap, _, err := decode(blob, MaxBlobBytes, false)
	if err != nil {
		return Metadata{}, err
	}
	return snap.Meta, nil
}

func decode(blob []byte, maxBytes int64, verify bool) (*Snapshot, int64, error) {
	if maxBytes <= 0 || maxBytes > MaxBlobBytes {
		maxBytes = MaxBlobBytes
	}
	n := int64(len(blob))
	fail := func(off int64, field, format string, args ...any) (*Snapshot, int64, error) {
		return nil, off, &DecodeError{Offset: off, Field: field, Reason: fmt.Sprintf(format, args...)}
	}
	if n > maxBytes {
		return nil, 0, &DecodeError{Offset: 0, Field: "blob", Reason: fmt.Sprintf("%d bytes, the limit is %d", n, maxBytes), kind: ErrTooLarge}
	}
	if n < HeaderBytes+ChecksumBytes {
		return fail(0, "header", "blob is %d bytes, shorter than the %d-byte header and %d-byte checksum", n, HeaderBytes, ChecksumBytes)
	}
	if string(blob[:8]) != Magic {
		return fail(0, "magic", "got %q, want %q", blob[:8], Magic)
	}
	if v := binary.LittleEndian.Uint16(blob[8:]); v != Version {
		return nil, 8, &DecodeError{Offset: 8, Field: "version", Reason: fmt.Sprintf("format version %d, this build reads version %d", v, Version), kind: ErrUnsupportedVersion}
	}
	if f := binary.LittleEndian.Uint16(blob[10:]); f != 0 {
		return fail(10, "flags", "0x%04x, no flags are defined in version %d", f, Version)
	}
	metaLen := int64(binary.LittleEndian.Uint32(blob[12:]))
	if metaLen > MaxMetadataBytes {
		return fail(12, "metadata length", "%d bytes, the limit is MaxMetadataBytes=%d", metaLen, MaxMetadataBytes)
	}
	count := int64(binary.LittleEndian.Uint32(blob[16:]))
	if count > MaxSections {
		return fail(16, "section count", "%d sections, the limit is MaxSections=%d", count, MaxSections)
	}
	if r := binary.LittleEndian.Uint32(blob[20:]); r != 0 {
		return fail(20, "reserved", "0x%08x, must be 0", r)
	}
	// body is where the checksum starts: nothing may lie past it.
	body := n - ChecksumBytes
	off := int64(HeaderBytes)
	type entry struct {
		name string
		len  int64
	}
	entries := make([]entry, 0, count)
	for i := int64(0); i < count; i++ {
		field := fmt.Sprintf("section[%d]", i)
		if off+1 > body {
			return fail(off, field+".name length", "the section table runs past the end of the blob")
		}
		nl := int64(blob[off])
		off++
		if nl == 0 || nl > MaxSectionNameBytes {
			return fail(off-1, field+".name length", "%d, want 1..%d", nl, MaxSectionNameBytes)
		}
		if off+nl+8 > body {
			return fail(off, field, "the section table runs past the end of the blob")
		}
		name := string(blob[off : off+nl])
		if err := checkSectionName(name); err != nil {
			return fail(off, field+".name", "%v", err)
		}
		for _, e := range entries {
			if e.name == name {
				return fail(off, field+".name", "section %q appears twice", name)
			}
		}
		off += nl
		l := binary.LittleEndian.Uint64(blob[off:])
		if l > uint64(maxBytes) {
			return nil, off, &DecodeError{Offset: off, Field: field + ".length", Reason: fmt.Sprintf("section %q claims %d bytes, the blob limit is %d", name, l, maxBytes), kind: ErrTooLarge}
		}
		off += 8
		entries = append(entries, entry{name: name, len: int64(l)})
	}
	// need accumulates the bytes the header promises, checked against
	// body before each addition so the sum cannot overflow.
	need := off + metaLen
	if need > body {
		return fail(off, "metadata", "%d bytes of metadata run past the end of the blob (%d bytes before the checksum)", metaLen, body)
	}
	for i, e := range entries {
		if e.len > math.MaxInt64-need || need+e.len > body {
			return fail(need, fmt.Sprintf("section[%d] %q", i, e.name), "%d bytes run past the end of the blob (%d bytes before the checksum)", e.len, body)
		}
		need += e.len
	}
	if need != body {
		return fail(need, "trailer", "%d unexpected bytes between the last section and the checksum", body-need)
	}
	if verify {
		sum := sha256.Sum256(blob[:body])
		if !bytes.Equal(sum[:], blob[body:]) {
			return fail(body, "checksum", "SHA-256 mismatch: the blob was altered or truncated")
		}
	}
	meta, err := unmarshalMetadata(blob[off : off+metaLen])
	if err != nil {
		var de *DecodeError
		if errors.As(err, &de) {
			de.Offset += off
			return nil, de.Offset, de
		}
		return nil, off, err
	}
	snap := &Snapshot{Meta: meta, Sections: make([]Section, len(entries))}
	p := off + metaLen
	for i, e := range entries {
		snap.Sections[i] = Section{Name: e.name, Data: blob[p : p+e.len : p+e.len]}
		p += e.len
	}
	return snap, 0, nil
}

func checkSectionName(name string) error {
	if name == "" || len(name) > MaxSectionNameBytes {
		return fmt.Errorf("section name %q: want 1..%d bytes", name, MaxSectionNameBytes)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return fmt.Errorf("section name %q: want lower-case letters, digits, '_', '-' or '.'", name)
		}
	}
	return nil
}

// Metadata describes the VM and host a snapshot came from.
type Metadata struct {
	Backend        string // backend name, "firecracker"
	BackendVersion string // hypervisor version, "1.7.0"
	Arch           string // host architecture, GOARCH spelling: "amd64"
	CPUModel       string // host CPU model name
	VCPUs          int
	MemoryMiB      int
	// GuestAgentVersion names the guest agent build ("kelpie-guest 0.1").
	GuestAgentVersion string
	// GuestProtocol is the guest protocol version the agent spoke.
	GuestProtocol int
}

// Validate checks the fields an encoder may write.
func (m Metadata) Validate() error {
	var errs []error
	str := func(field, v string, required bool) {
		switch {
		case v == "" && required:
			errs = append(errs, fmt.Errorf("snapshot metadata: %s is empty", field))
		case len(v) > MaxFieldBytes:
			errs = append(errs, fmt.Errorf("snapshot metadata: %s is %d bytes, the limit is MaxFieldBytes=%d", field, len(v), MaxFieldBytes))
		case !printable(v):
			errs = append(errs, fmt.Errorf("snapshot metadata: %s %q is not printable UTF-8", field, v))
		}
	}
	str("Backend", m.Backend, true)
	str("BackendVersion", m.BackendVersion, true)
	str("Arch", m.Arch, true)
	str("CPUModel", m.CPUModel, false)
	str("GuestAgentVersion", m.GuestAgentVersion, false)
	if m.VCPUs < vm.MinVCPUs || m.VCPUs > vm.MaxVCPUs {
		errs = append(errs, fmt.Errorf("snapshot metadata: VCPUs=%d, want %d..%d", m.VCPUs, vm.MinVCPUs, vm.MaxVCPUs))
	}
	if m.MemoryMiB < vm.MinMemoryMiB || m.MemoryMiB > vm.MaxMemoryMiB {
		errs = append(errs, fmt.Errorf("snapshot metadata: MemoryMiB=%d, want %d..%d", m.MemoryMiB, vm.MinMemoryMiB, vm.MaxMemoryMiB))
	}
	if m.GuestProtocol < 0 || m.GuestProtocol > math.MaxUint16 {
		errs = append(errs, fmt.Errorf("snapshot metadata: GuestProtocol=%d, want 0..%d", m.GuestProtocol, math.MaxUint16))
	}
	return errors.Join(errs...)
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

// Metadata encoding: strings as u16 length + bytes, in this order:
// Backend, BackendVersion, Arch, CPUModel, GuestAgentVersion; then VCPUs
// u32, MemoryMiB u32, GuestProtocol u16. Validate bounds every string at
// MaxFieldBytes, so the encoding fits MaxMetadataBytes.
func (m Metadata) marshal() []byte {
	var b []byte
	for _, s := range []string{m.Backend, m.BackendVersion, m.Arch, m.CPUModel, m.GuestAgentVersion} {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(s)))
		b = append(b, s...)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(m.VCPUs))
	b = binary.LittleEndian.AppendUint32(b, uint32(m.MemoryMiB))
	b = binary.LittleEndian.AppendUint16(b, uint16(m.GuestProtocol))
	return b
}

func unmarshalMetadata(b []byte) (Metadata, error) {
	off := 0
	fail := func(field, format string, args ...any) (Metadata, error) {
		return Metadata{}, &DecodeError{Offset: int64(off), Field: "metadata." + field, Reason: fmt.Sprintf(format, args...)}
	}
	var strs [5]string
	names := [5]string{"Backend", "BackendVersion", "Arch", "CPUModel", "GuestAgentVersion"}
	for i := range strs {
		if len(b)-off < 2 {
			return fail(names[i], "metadata ends before the field's length")
		}
		l := int(binary.LittleEndian.Uint16(b[off:]))
		off += 2
		if l > MaxFieldBytes {
			return fail(names[i], "%d bytes, the limit is MaxFieldBytes=%d", l, MaxFieldBytes)
		}
		if len(b)-off < l {
			return fail(names[i], "%d bytes run past the end of the metadata", l)
		}
		strs[i] = string(b[off : off+l])
		off += l
	}
	if len(b)-off < 10 {
		return fail("VCPUs", "metadata ends before the numeric fields")
	}
	m := Metadata{
		Backend: strs[0], BackendVersion: strs[1], Arch: strs[2], CPUModel: strs[3], GuestAgentVersion: strs[4],
		VCPUs:         int(binary.LittleEndian.Uint32(b[off:])),
		MemoryMiB:     int(binary.LittleEndian.Uint32(b[off+4:])),
		GuestProtocol: int(binary.LittleEndian.Uint16(b[off+8:])),
	}
	off += 10
	if off != len(b) {
		return fail("end", "%d trailing bytes after the last field", len(b)-off)
	}
	if err := m.Validate(); err != nil {
		off = 0
		return fail("fields", "%v", err)
	}
	return m, nil
}

// Host describes what a restoring side offers.
type Host struct {
	Backend        string
	BackendVersion string
	Arch           string
	CPUModel       string
	// VCPUs and MemoryMiB are the shape of the VM being restored into.
	VCPUs     int
	MemoryMiB int
	// MinGuestProtocol..MaxGuestProtocol are the guest protocol versions
	// the host speaks.
	MinGuestProtocol, MaxGuestProtocol int
}

// Compatible returns nil if a snapshot with meta can be restored on h, or an
// error matching ErrIncompatible listing every mismatch. Backends restore
// only into the exact hypervisor build, architecture and CPU model that
// made the snapshot: Firecracker documents that snapshots resume only on
// the same CPU model and version, and QEMU's migration stream is no more
// forgiving about CPU features.
func Compatible(meta Metadata, h Host) error {
	var why []string
	diff := func(what, have, want string) {
		if have != want {
			why = append(why, fmt.Sprintf("%s is %q, this host has %q", what, have, want))
		}
	}
	diff("backend", meta.Backend, h.Backend)
	diff("backend version", meta.BackendVersion, h.BackendVersion)
	diff("architecture", meta.Arch, h.Arch)
	diff("CPU model", meta.CPUModel, h.CPUModel)
	if meta.VCPUs != h.VCPUs {
		why = append(why, fmt.Sprintf("snapshot has %d vCPUs, the VM is configured with %d", meta.VCPUs, h.VCPUs))
	}
	if meta.MemoryMiB != h.MemoryMiB {
		why = append(why, fmt.Sprintf("snapshot has %d MiB of memory, the VM is configured with %d", meta.MemoryMiB, h.MemoryMiB))
	}
	if meta.GuestProtocol < h.MinGuestProtocol || meta.GuestProtocol > h.MaxGuestProtocol {
		why = append(why, fmt.Sprintf("guest agent %q speaks protocol %d, this host speaks %d..%d", meta.GuestAgentVersion, meta.GuestProtocol, h.MinGuestProtocol, h.MaxGuestProtocol))
	}
	if len(why) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrIncompatible, joinSemi(why))
}

func joinSemi(s []string) string {
	var b bytes.Buffer
	for i, x := range s {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(x)
	}
	return b.String()
}
