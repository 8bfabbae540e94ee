package sim

import (
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"time"
)

// Stream is a named, seeded random sequence. Every component of a simulation
// draws from its own stream (Simulation.Rand), derived from the seed and the
// stream's name alone, so adding a component or a fault never shifts the
// draws of another. A Stream is safe for concurrent use.
type Stream struct {
	name string
	mu   sync.Mutex
	r    *rand.Rand
}

// NewStream returns the stream called name under seed. Two streams with the
// same seed and name yield the same sequence.
func NewStream(seed uint64, name string) *Stream {
	var in [8]byte
	binary.LittleEndian.PutUint64(in[:], seed)
	h := sha256.New()
	h.Write(in[:])
	h.Write([]byte(name))
	sum := h.Sum(nil)
	src := rand.NewPCG(binary.LittleEndian.Uint64(sum[0:8]), binary.LittleEndian.Uint64(sum[8:16]))
	return &Stream{name: name, r: rand.New(src)}
}

// Name is the stream's name.
func (s *Stream) Name() string { return s.name }

// Uint64 returns a uniformly distributed 64-bit value.
func (s *Stream) Uint64() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.r.Uint64()
}

// IntN returns a value in [0, n). It returns 0 when n <= 0.
func (s *Stream) IntN(n int) int {
	if n <= 0 {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.r.IntN(n)
}

// Float64 returns a value in [0, 1).
func (s *Stream) Float64() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.r.Float64()
}

// Chance reports true with probability p (p <= 0 never, p >= 1 always; a
// draw is consumed either way so the stream's position does not depend on p).
func (s *Stream) Chance(p float64) bool {
	f := s.Float64()
	return f < p
}

// Duration returns a duration uniformly distributed in [lo, hi].
func (s *Stream) Duration(lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return lo + time.Duration(s.r.Int64N(int64(hi-lo)+1))
}

// Bytes fills b with random bytes.
func (s *Stream) Bytes(b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := 0; i < len(b); i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], s.r.Uint64())
		copy(b[i:], w[:])
	}
}

// Perm returns a random permutation of [0, n).
func (s *Stream) Perm(n int) []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.r.Perm(n)
}
