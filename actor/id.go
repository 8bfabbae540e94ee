package actor

import (
	"fmt"
	"strings"
)

// Limits of an actor ID.
const (
	// MaxNamespaceBytes bounds the namespace part of an ID.
	MaxNamespaceBytes = 64
	// MaxKeyBytes bounds the id part of an ID.
	MaxKeyBytes = 256
)

// ID names an actor: a namespace, which selects the actor's kind (its
// Factory), and a key unique within the namespace. Its text form is
// "namespace:key".
type ID struct {
	Namespace string
	Key       string
}

// NewID returns the ID namespace:key, or an error naming the part that is
// invalid and why.
func NewID(namespace, key string) (ID, error) {
	id := ID{Namespace: namespace, Key: key}
	if err := id.Validate(); err != nil {
		return ID{}, err
	}
	return id, nil
}

// MustID is NewID for IDs that are constants of the program; it panics on an
// invalid one.
func MustID(namespace, key string) ID {
	id, err := NewID(namespace, key)
	if err != nil {
		panic(err)
	}
	return id
}

// ParseID parses "namespace:key".
func ParseID(s string) (ID, error) {
	ns, key, ok := strings.Cut(s, ":")
	if !ok {
		return ID{}, fmt.Errorf("actor id %q: no ':' between namespace and key; want \"namespace:key\"", trunc(s))
	}
	return NewID(ns, key)
}

// String is the text form, "namespace:key".
func (id ID) String() string { return id.Namespace + ":" + id.Key }

// Validate reports whether id is well formed. A namespace is 1 to
// MaxNamespaceBytes bytes of [a-z0-9._-] starting with a letter; a key is 1
// to MaxKeyBytes bytes of [A-Za-z0-9._@=+-]. Neither may hold ':' or '/',
// which keeps the text form and the storage keys unambiguous.
func (id ID) Validate() error {
	if err := checkPart("namespace", id.Namespace, MaxNamespaceBytes, "MaxNamespaceBytes", nsByte, "[a-z0-9._-]"); err != nil {
		return fmt.Errorf("actor id %q: %w", trunc(id.String()), err)
	}
	if c := id.Namespace[0]; c < 'a' || c > 'z' {
		return fmt.Errorf("actor id %q: namespace %q must start with a letter a-z", trunc(id.String()), id.Namespace)
	}
	if err := checkPart("key", id.Key, MaxKeyBytes, "MaxKeyBytes", keyByte, "[A-Za-z0-9._@=+-]"); err != nil {
		return fmt.Errorf("actor id %q: %w", trunc(id.String()), err)
	}
	return nil
}

func checkPart(what, s string, max int, maxName string, ok func(byte) bool, set string) error {
	if s == "" {
		return fmt.Errorf("%s is empty; want 1 to %d bytes of %s", what, max, set)
	}
	if len(s) > max {
		return fmt.Errorf("%s is %d bytes, the limit is %d (%s)", what, len(s), max, maxName)
	}
	for i := 0; i < len(s); i++ {
		if !ok(s[i]) {
			return fmt.Errorf("%s has byte %q at offset %d; want only %s", what, s[i], i, set)
		}
	}
	return nil
}

func nsByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
}

func keyByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '.' || c == '_' || c == '-' || c == '@' || c == '=' || c == '+'
}

// truncBytes bounds how much of a bad input an error message quotes.
const truncBytes = 80

func trunc(s string) string {
	if len(s) > truncBytes {
		return s[:truncBytes] + "..."
	}
	return s
}

// Storage layout. Everything of one actor lives under "actor/<ns>/<key>/":
// "r" its record (its fencing meta and its state, in one value: see
// appendRecord), and "d/<user key>" the keys it writes through Call. Because neither part of an
// ID may hold '/', one actor's prefix is never a prefix of another's.
const keyPrefix = "actor/"

func actorPrefix(id ID) []byte {
	b := make([]byte, 0, len(keyPrefix)+len(id.Namespace)+len(id.Key)+2)
	b = append(b, keyPrefix...)
	b = append(b, id.Namespace...)
	b = append(b, '/')
	b = append(b, id.Key...)
	b = append(b, '/')
	return b
}

// keys are an activation's storage keys, computed once.
type keys struct {
	record []byte
	data   []byte // prefix of the actor's own keys
}

func keysFor(id ID) keys {
	p := actorPrefix(id)
	k := keys{}
	k.record = append(append([]byte{}, p...), 'r')
	k.data = append(append([]byte{}, p...), 'd', '/')
	return k
}
