package simvm

import (
	"bytes"
	"testing"
)

// FuzzLoadGuest feeds arbitrary section contents to LoadGuest: it must
// refuse them with an error or load a guest that saves back to the same
// bytes, never panic or exceed its limits.
func FuzzLoadGuest(f *testing.F) {
	g := NewGuest("seed", 7, nil)
	g.write("/a/b", []byte("hello"), 0o600)
	g.write("/c", nil, 0o644)
	state, files := g.Save()
	f.Add(state, files)
	f.Add(state, []byte{})
	f.Add([]byte{}, files)
	f.Fuzz(func(t *testing.T, state, files []byte) {
		g, err := LoadGuest(state, files, nil)
		if err != nil {
			return
		}
		if len(g.files) > MaxGuestFiles || g.bytes > MaxGuestFSBytes {
			t.Fatalf("loaded %d files, %d bytes: past the limits", len(g.files), g.bytes)
		}
		s2, f2 := g.Save()
		if !bytes.Equal(s2, state) {
			t.Fatalf("state does not round-trip")
		}
		// Files may be listed in any order in the input; Save sorts them,
		// so a second load and save must be stable.
		g2, err := LoadGuest(s2, f2, nil)
		if err != nil {
			t.Fatalf("a saved guest does not load: %v", err)
		}
		if _, f3 := g2.Save(); !bytes.Equal(f3, f2) {
			t.Fatalf("save/load/save is not stable")
		}
	})
}
