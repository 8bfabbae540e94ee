package placement

import (
	"fmt"
	"time"
)

// MaxTableActors bounds how many actors one Table tracks. A table keeps an
// entry for every actor it ever granted, held or not, because an actor's
// epoch must never go back; past this bound Acquire fails.
const MaxTableActors = 10_000_000

// MaxTableSessions bounds the live sessions of one Table.
const MaxTableSessions = 4096

// MinTTL and MaxTTL bound a session's time to live.
const (
	MinTTL = 10 * time.Millisecond
	MaxTTL = time.Hour
)

// Table is the lease service's state machine: sessions with a TTL, and per
// actor the session that holds it and its epoch. It does no I/O and reads no
// clock; every call is given the time. It is not safe for concurrent use.
type Table struct {
	ttl         time.Duration
	nextSession uint64
	sessions    map[uint64]*session
	actors      map[string]*grant
}

type session struct {
	node    string
	expires time.Time
}

type grant struct {
	node    string
	session uint64
	epoch   uint64
	held    bool
}

// NewTable returns an empty table whose sessions live ttl past their last
// renewal.
func NewTable(ttl time.Duration) (*Table, error) {
	if ttl < MinTTL || ttl > MaxTTL {
		return nil, fmt.Errorf("placement: session TTL %s is outside [%s, %s] (MinTTL, MaxTTL)", ttl, MinTTL, MaxTTL)
	}
	return &Table{ttl: ttl, sessions: map[uint64]*session{}, actors: map[string]*grant{}}, nil
}

// TTL is the sessions' time to live.
func (t *Table) TTL() time.Duration { return t.ttl }

// Open starts a session for node at now and returns its id and expiry.
// Expired sessions are forgotten here, which keeps the table bounded.
func (t *Table) Open(node string, now time.Time) (uint64, time.Time, error) {
	if err := CheckNodeName(node); err != nil {
		return 0, time.Time{}, err
	}
	for id, s := range t.sessions {
		if !now.Before(s.expires) {
			delete(t.sessions, id)
		}
	}
	if len(t.sessions) >= MaxTableSessions {
		return 0, time.Time{}, fmt.Errorf("placement: %d live sessions, the limit is %d (MaxTableSessions)", len(t.sessions), MaxTableSessions)
	}
	t.nextSession++
	exp := now.Add(t.ttl)
	t.sessions[t.nextSession] = &session{node: node, expires: exp}
	return t.nextSession, exp, nil
}

// KeepAlive renews session id at now and returns its new expiry. A session
// that already expired cannot be renewed: ErrNoSession.
func (t *Table) KeepAlive(id uint64, now time.Time) (time.Time, error) {
	s, ok := t.sessions[id]
	if !ok || !now.Before(s.expires) {
		return time.Time{}, fmt.Errorf("keep session %d alive: %w", id, ErrNoSession)
	}
	s.expires = now.Add(t.ttl)
	return s.expires, nil
}

// Expire ends session id at once, as if its renewals had stopped long ago.
func (t *Table) Expire(id uint64) {
	delete(t.sessions, id)
}

func (t *Table) alive(id uint64, now time.Time) bool {
	s, ok := t.sessions[id]
	return ok && now.Before(s.expires)
}

// Acquire grants actor to the node of session id at now, with an epoch one
// larger than the actor's last. If another live session holds the actor it
// fails with a *NotOwnerError, unless steal is set: then the grant is taken
// from the holder, which is what happens in a real cluster when the holder's
// lease lapsed at the service while the holder, paused or partitioned, did
// not notice. The holder keeps believing it owns the actor; fencing must stop
// its commits.
func (t *Table) Acquire(id uint64, actor string, now time.Time, steal bool) (Lease, error) {
	s, ok := t.sessions[id]
	if !ok || !now.Before(s.expires) {
		return Lease{}, fmt.Errorf("acquire %s: session %d: %w", actor, id, ErrNoSession)
	}
	g := t.actors[actor]
	if g == nil {
		if len(t.actors) >= MaxTableActors {
			return Lease{}, fmt.Errorf("acquire %s: the table tracks %d actors, the limit is %d (MaxTableActors)", actor, len(t.actors), MaxTableActors)
		}
		g = &grant{}
		t.actors[actor] = g
	}
	if g.held && t.alive(g.session, now) {
		if g.session == id {
			return Lease{}, fmt.Errorf("acquire %s: %w (session %d, epoch %d)", actor, ErrHeld, id, g.epoch)
		}
		if !steal {
			return Lease{}, &NotOwnerError{Actor: actor, Owner: g.node, Epoch: g.epoch}
		}
	}
	if g.epoch == ^uint64(0) {
		return Lease{}, fmt.Errorf("acquire %s: epoch exhausted", actor)
	}
	g.node, g.session, g.held = s.node, id, true
	g.epoch++
	return Lease{Actor: actor, Node: s.node, Epoch: g.epoch, Session: id}, nil
}

// Release gives up l if it is still the actor's current grant.
func (t *Table) Release(l Lease) error {
	g := t.actors[l.Actor]
	if g == nil || !g.held || g.session != l.Session || g.epoch != l.Epoch {
		return fmt.Errorf("release %s: %w: it is not the current grant", l, ErrLeaseLost)
	}
	g.held = false
	return nil
}

// Owner returns the actor's current grant if it is held by a live session
// at now.
func (t *Table) Owner(actor string, now time.Time) (Lease, bool) {
	g := t.actors[actor]
	if g == nil || !g.held || !t.alive(g.session, now) {
		return Lease{}, false
	}
	return Lease{Actor: actor, Node: g.node, Epoch: g.epoch, Session: g.session}, true
}

// Epoch is the actor's latest granted epoch, 0 if it was never granted.
func (t *Table) Epoch(actor string) uint64 {
	if g := t.actors[actor]; g != nil {
		return g.epoch
	}
	return 0
}
