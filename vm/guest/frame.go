package guest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Frame layout: magic, payload length, payload checksum, payload.
const (
	frameHeaderBytes = 12
	// MaxFrameBytes bounds one frame's payload. It is sized for the largest
	// legitimate message, a file of MaxFileBytes or an exec result with
	// MaxExecOutputBytes on each stream, base64-encoded inside JSON.
	MaxFrameBytes = 4 << 20
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
	// Kind is "garbage", "oversized" or "checksum".
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

// appendFrame encodes payload as one frame appended to dst.
func appendFrame(dst, payload []byte, limit int) ([]byte, error) {
	if len(payload) > limit {
		return dst, fmt.Errorf("%w: payload of %d bytes, limit %d", ErrFrameTooLarge, len(payload), limit)
	}
	var h [frameHeaderBytes]byte
	copy(h[:4], frameMagic[:])
	binary.BigEndian.PutUint32(h[4:8], uint32(len(payload)))
	binary.BigEndian.PutUint32(h[8:12], crc32.Checksum(payload, crcTable))
	dst = append(dst, h[:]...)
	return append(dst, payload...), nil
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

// ReadFrame returns the next frame's payload. A *FrameError reports a bad
// stretch of the stream that has been skipped (call ReadFrame again); any
// other error comes from the underlying reader and is final.
func (fr *FrameReader) ReadFrame() ([]byte, error) {
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
		out := bytes.Clone(payload)
		fr.start += total
		return out, nil
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
