package guest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
)

// Frame layout: magic, payload length, payload checksum, header checksum
// (over the twelve bytes before it), payload. The header has its own
// checksum so that a corrupted length is caught at once instead of making
// the reader wait for megabytes that will never come.
const (
	frameHeaderBytes = 16
	// MaxFrameBytes bounds one frame's payload. It is sized for the largest
	// legitimate message, an exec result with MaxExecOutputBytes on each
	// stream, base64-encoded inside JSON (4/3 of 32 MiB, plus room).
	MaxFrameBytes = 48 << 20
	// frameBufKeepBytes is the reader buffer kept between frames; a larger
	// one, grown for a big frame, is released once that frame is consumed.
	frameBufKeepBytes = 256 << 10
	// frameReadChunk is how much the reader asks the stream for at a time.
	frameReadChunk = 32 << 10
)

// frameMagic starts every frame; the reader scans for it to resynchronise.
var frameMagic = [4]byte{'K', 'L', 'P', 'F'}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// ErrFrameTooLarge is returned when a payload exceeds MaxFrameBytes, on
// either side of the channel.
var ErrFrameTooLarge = errors.New("guest: frame too large")

// FrameError is a recoverable problem in the incoming byte stream. The reader
// has already skipped past it; the next ReadFrame continues with the stream.
type FrameError struct {
	// Kind is "garbage", "header" (corrupted header), "oversized" or
	// "checksum" (corrupted payload).
	Kind string
	// Bytes is how many bytes were skipped (garbage) or the length the
	// frame header announced (oversized, checksum).
	Bytes int
	// Limit is the frame size limit, for "oversized".
	Limit int
}

func (e *FrameError) Error() string {
	switch e.Kind {
	case "garbage":
		return fmt.Sprintf("guest: skipped %d bytes that were not a frame", e.Bytes)
	case "oversized":
		return fmt.Sprintf("guest: frame announces %d bytes, over the %d-byte limit", e.Bytes, e.Limit)
	case "header":
		return "guest: frame header failed its checksum"
	default:
		return fmt.Sprintf("guest: frame of %d bytes failed its checksum", e.Bytes)
	}
}

// Unwrap lets errors.Is(err, ErrFrameTooLarge) match oversized frames.
func (e *FrameError) Unwrap() error {
	if e.Kind == "oversized" {
		return ErrFrameTooLarge
	}
	return nil
}

// frameHeader returns the header for a payload made of parts.
func frameHeader(parts ...[]byte) (h [frameHeaderBytes]byte, n int) {
	var crc uint32
	for _, p := range parts {
		n += len(p)
		crc = crc32.Update(crc, crcTable, p)
	}
	copy(h[:4], frameMagic[:])
	binary.BigEndian.PutUint32(h[4:8], uint32(n))
	binary.BigEndian.PutUint32(h[8:12], crc)
	binary.BigEndian.PutUint32(h[12:16], crc32.Checksum(h[:12], crcTable))
	return h, n
}

// appendFrame encodes payload as one frame appended to dst.
func appendFrame(dst, payload []byte, limit int) ([]byte, error) {
	if len(payload) > limit {
		return dst, fmt.Errorf("%w: payload of %d bytes, limit %d", ErrFrameTooLarge, len(payload), limit)
	}
	h, _ := frameHeader(payload)
	dst = append(dst, h[:]...)
	return append(dst, payload...), nil
}

// writeFrame writes one frame whose payload is the concatenation of parts,
// without copying them into one buffer (exec results and files are large).
// The caller serialises writers.
func writeFrame(w io.Writer, limit int, parts ...[]byte) error {
	h, n := frameHeader(parts...)
	if n > limit {
		return fmt.Errorf("%w: payload of %d bytes, limit %d", ErrFrameTooLarge, n, limit)
	}
	bufs := net.Buffers(append([][]byte{h[:]}, parts...))
	_, err := bufs.WriteTo(w)
	return err
}

// FrameReader splits a byte stream into frame payloads, resynchronising on
// the next magic after anything that is not a valid frame.
type FrameReader struct {
	r          io.Reader
	limit      int
	buf        []byte
	start, end int
	skipped    int
	err        error
}

// NewFrameReader reads frames of at most limit payload bytes from r; a
// limit <= 0 means MaxFrameBytes.
func NewFrameReader(r io.Reader, limit int) *FrameReader {
	if limit <= 0 {
		limit = MaxFrameBytes
	}
	return &FrameReader{r: r, limit: limit, buf: make([]byte, frameReadChunk)}
}

// ReadFrame returns the next frame's payload, valid until the next call
// (large payloads are not copied). A *FrameError reports a bad stretch of
// the stream that has been skipped (call ReadFrame again); any other error
// comes from the underlying reader and is final.
func (fr *FrameReader) ReadFrame() ([]byte, error) {
	if fr.start == fr.end && len(fr.buf) > frameBufKeepBytes {
		fr.buf = make([]byte, frameReadChunk)
		fr.start, fr.end = 0, 0
	}
	for {
		data := fr.buf[fr.start:fr.end]
		i := bytes.Index(data, frameMagic[:])
		if i < 0 {
			// Keep a tail that could be the beginning of a magic.
			keep := min(len(data), len(frameMagic)-1)
			fr.skipped += len(data) - keep
			fr.start = fr.end - keep
			if err := fr.fill(len(frameMagic)); err != nil {
				return nil, err
			}
			continue
		}
		if i > 0 {
			fr.skipped += i
			fr.start += i
		}
		if fr.skipped > 0 {
			n := fr.skipped
			fr.skipped = 0
			return nil, &FrameError{Kind: "garbage", Bytes: n}
		}
		if fr.end-fr.start < frameHeaderBytes {
			if err := fr.fill(frameHeaderBytes); err != nil {
				return nil, err
			}
			continue
		}
		h := fr.buf[fr.start : fr.start+frameHeaderBytes]
		if crc32.Checksum(h[:12], crcTable) != binary.BigEndian.Uint32(h[12:16]) {
			fr.start++
			return nil, &FrameError{Kind: "header"}
		}
		n := binary.BigEndian.Uint32(h[4:8])
		if uint64(n) > uint64(fr.limit) {
			// Skip the magic only: the announced length cannot be trusted,
			// so the next frame may start anywhere after it.
			fr.start++
			return nil, &FrameError{Kind: "oversized", Bytes: int(n), Limit: fr.limit}
		}
		total := frameHeaderBytes + int(n)
		if fr.end-fr.start < total {
			if err := fr.fill(total); err != nil {
				return nil, err
			}
			continue
		}
		payload := fr.buf[fr.start+frameHeaderBytes : fr.start+total]
		if crc32.Checksum(payload, crcTable) != binary.BigEndian.Uint32(h[8:12]) {
			fr.start++
			return nil, &FrameError{Kind: "checksum", Bytes: int(n)}
		}
		fr.start += total
		return payload, nil
	}
}

// fill reads until at least need bytes are buffered from start, moving the
// buffered bytes to the front and growing the buffer (never beyond one
// maximal frame) as needed.
func (fr *FrameReader) fill(need int) error {
	if fr.err != nil {
		return fr.err
	}
	if fr.start > 0 {
		copy(fr.buf, fr.buf[fr.start:fr.end])
		fr.end -= fr.start
		fr.start = 0
	}
	if need > len(fr.buf) {
		grown := make([]byte, max(need, min(2*len(fr.buf), frameHeaderBytes+fr.limit)))
		copy(grown, fr.buf[:fr.end])
		fr.buf = grown
	}
	for fr.end < need {
		space := fr.buf[fr.end:]
		if len(space) > frameReadChunk {
			space = space[:frameReadChunk]
		}
		n, err := fr.r.Read(space)
		fr.end += n
		if err != nil {
			if fr.end >= need {
				fr.err = err
				return nil
			}
			fr.err = err
			return err
		}
	}
	return nil
}
