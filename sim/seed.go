package sim

import (
	crand "crypto/rand"
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// SeedEnv is the environment variable that carries a simulation's seed.
const SeedEnv = "DST_SEED"

// ParseSeed parses a seed as written in DST_SEED or on a command line: a
// decimal unsigned 64-bit integer.
func ParseSeed(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("seed %q: want a decimal integer between 0 and %d", s, uint64(1<<64-1))
	}
	return n, nil
}

// SeedFromEnv returns the seed in DST_SEED. When the variable is unset it
// chooses a seed at random and reports chosen=true, so the caller can print
// it: a run is always replayable.
func SeedFromEnv() (seed uint64, chosen bool, err error) {
	v, ok := os.LookupEnv(SeedEnv)
	if !ok {
		return RandomSeed(), true, nil
	}
	seed, err = ParseSeed(v)
	if err != nil {
		return 0, false, fmt.Errorf("%s: %w", SeedEnv, err)
	}
	return seed, false, nil
}

// RandomSeed returns a fresh seed from the operating system's random source.
// Seeds are kept below 2^53 so they survive a round trip through JSON and
// shells without loss.
func RandomSeed() uint64 {
	var b [8]byte
	if _, err := crand.Read(b[:]); err != nil {
		// crypto/rand.Read does not fail on supported platforms; a fixed seed is
		// still a valid, printed, replayable choice.
		return 1
	}
	return binary.LittleEndian.Uint64(b[:]) & (1<<53 - 1)
}

// SeedRange is an inclusive range of seeds, written "A-B" or "N".
type SeedRange struct{ First, Last uint64 }

// maxSeedRange bounds a sweep so a typo ("1-10000000000") is an error, not a
// week of computation.
const maxSeedRange = 1_000_000

// ParseSeedRange parses "A-B" (inclusive) or a single seed "N".
func ParseSeedRange(s string) (SeedRange, error) {
	a, b, found := strings.Cut(strings.TrimSpace(s), "-")
	first, err := strconv.ParseUint(strings.TrimSpace(a), 10, 64)
	if err != nil {
		return SeedRange{}, fmt.Errorf("seed range %q: %q is not a decimal seed", s, a)
	}
	last := first
	if found {
		last, err = strconv.ParseUint(strings.TrimSpace(b), 10, 64)
		if err != nil {
			return SeedRange{}, fmt.Errorf("seed range %q: %q is not a decimal seed", s, b)
		}
	}
	if last < first {
		return SeedRange{}, fmt.Errorf("seed range %q: end %d is before start %d", s, last, first)
	}
	if last-first >= maxSeedRange {
		return SeedRange{}, fmt.Errorf("seed range %q: %d seeds, the limit is %d", s, last-first+1, maxSeedRange)
	}
	return SeedRange{First: first, Last: last}, nil
}

// Len is the number of seeds in the range.
func (r SeedRange) Len() int { return int(r.Last-r.First) + 1 }
