package image

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
)

// newc ("SVR4 with no CRC") is the cpio format the Linux kernel unpacks an
// initramfs from: a 110-byte ASCII header of thirteen 8-digit hex fields,
// the NUL-terminated name padded to 4 bytes, then the data padded to 4.
const (
	newcMagic       = "070701"
	newcHeaderBytes = 110
	trailerName     = "TRAILER!!!"
	// MaxNameBytes bounds an entry's path (the kernel's PATH_MAX).
	MaxNameBytes = 4096
	// MaxEntryBytes bounds one file's data: the header's size field has
	// eight hex digits.
	MaxEntryBytes = 1<<32 - 1
	// MaxEntries bounds the entries of one archive (busybox brings ~400).
	MaxEntries = 65536
)

// Unix file type bits as cpio stores them in the mode field.
const (
	modeDir     = 0o040000
	modeFile    = 0o100000
	modeSymlink = 0o120000
	modeCharDev = 0o020000
)

// ErrClosed is returned for writes after Close.
var ErrClosed = errors.New("image: cpio writer is closed")

// CpioWriter writes a newc cpio archive. Entries are written in the order
// given, with fixed owner (root), fixed modification time (0) and
// sequential inode numbers, so the same entries give the same bytes.
type CpioWriter struct {
	w       io.Writer
	ino     uint32
	entries int
	closed  bool
	names   map[string]bool
}

// NewCpioWriter returns a writer that writes the archive to w.
func NewCpioWriter(w io.Writer) *CpioWriter {
	return &CpioWriter{w: w, ino: 1, names: map[string]bool{}}
}

// Dir adds a directory.
func (c *CpioWriter) Dir(name string, perm fs.FileMode) error {
	return c.entry(name, modeDir|uint32(perm.Perm()), 0, 0, nil)
}

// File adds a regular file.
func (c *CpioWriter) File(name string, perm fs.FileMode, data []byte) error {
	return c.entry(name, modeFile|uint32(perm.Perm()), 0, 0, data)
}

// Symlink adds a symbolic link to target.
func (c *CpioWriter) Symlink(name, target string) error {
	if target == "" || len(target) > MaxNameBytes {
		return fmt.Errorf("image: symlink %s: target of %d bytes, want 1..%d", name, len(target), MaxNameBytes)
	}
	return c.entry(name, modeSymlink|0o777, 0, 0, []byte(target))
}

// CharDev adds a character device node.
func (c *CpioWriter) CharDev(name string, perm fs.FileMode, major, minor uint32) error {
	return c.entry(name, modeCharDev|uint32(perm.Perm()), major, minor, nil)
}

// cleanName validates an archive path: relative, clean, no NUL.
func cleanName(name string) (string, error) {
	switch {
	case name == "" || name == "." || name == "/":
		return "", errors.New("image: empty entry name")
	case len(name) > MaxNameBytes:
		return "", fmt.Errorf("image: entry name of %d bytes, the limit is MaxNameBytes=%d", len(name), MaxNameBytes)
	case strings.IndexByte(name, 0) >= 0:
		return "", fmt.Errorf("image: entry name %q contains a NUL byte", name)
	}
	n := strings.TrimPrefix(name, "/")
	if path.Clean(n) != n || strings.HasPrefix(n, "../") || n == ".." {
		return "", fmt.Errorf("image: entry name %q is not a clean path inside the archive", name)
	}
	return n, nil
}

func (c *CpioWriter) entry(name string, mode, rmajor, rminor uint32, data []byte) error {
	if c.closed {
		return ErrClosed
	}
	n, err := cleanName(name)
	if err != nil {
		return err
	}
	if c.names[n] {
		return fmt.Errorf("image: entry %q added twice", n)
	}
	if c.entries >= MaxEntries {
		return fmt.Errorf("image: %d entries, the limit is MaxEntries=%d", c.entries, MaxEntries)
	}
	if uint64(len(data)) > MaxEntryBytes {
		return fmt.Errorf("image: entry %q is %d bytes, the limit is MaxEntryBytes=%d", n, len(data), uint64(MaxEntryBytes))
	}
	c.names[n] = true
	c.entries++
	ino := c.ino
	c.ino++
	return c.write(n, ino, mode, rmajor, rminor, data)
}

func (c *CpioWriter) write(name string, ino, mode, rmajor, rminor uint32, data []byte) error {
	nlink := uint32(1)
	if mode&0o170000 == modeDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("%s%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		newcMagic, ino, mode, 0, 0, nlink, 0, uint32(len(data)), 0, 0, rmajor, rminor, uint32(len(name)+1), 0)
	buf := make([]byte, 0, newcHeaderBytes+len(name)+4)
	buf = append(buf, hdr...)
	buf = append(buf, name...)
	buf = append(buf, 0)
	buf = pad4(buf)
	if _, err := c.w.Write(buf); err != nil {
		return err
	}
	if len(data) == 0 {
		return nil
	}
	if _, err := c.w.Write(data); err != nil {
		return err
	}
	if p := (4 - len(data)%4) % 4; p > 0 {
		_, err := c.w.Write(make([]byte, p))
		return err
	}
	return nil
}

func pad4(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// Close writes the trailer. It does not close the underlying writer.
func (c *CpioWriter) Close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	return c.write(trailerName, 0, 0, 0, 0, nil)
}
