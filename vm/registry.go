package vm

import (
	"errors"
	"fmt"
	"strings"
	"sync"
)

// Backend is a hypervisor that can create VMs.
type Backend interface {
	// Name is the backend's registry name: "firecracker", "qemu", "sim".
	Name() string
	// Available returns nil when the backend can run VMs on this host, or
	// an error saying what is missing (a binary, /dev/kvm).
	Available() error
	// New creates a VM from cfg, in StateCreated. It validates cfg first.
	New(cfg VMConfig) (VMInstance, error)
}

// AutoBackend is the name that asks a Registry to pick the first available
// backend.
const AutoBackend = "auto"

// MaxBackends bounds the backends of one registry.
const MaxBackends = 16

// Registry holds backends in preference order and picks one by name or by
// what the host supports. The zero value is an empty registry.
type Registry struct {
	mu       sync.Mutex
	backends []Backend
}

// NewRegistry returns a registry of backends, most preferred first.
func NewRegistry(backends ...Backend) (*Registry, error) {
	r := &Registry{}
	for _, b := range backends {
		if err := r.Register(b); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// Register adds b after the backends already registered.
func (r *Registry) Register(b Backend) error {
	if b == nil {
		return errors.New("vm registry: nil backend")
	}
	name := b.Name()
	if name == "" || name == AutoBackend || strings.ContainsAny(name, " \t\n/") {
		return fmt.Errorf("vm registry: backend name %q: want a non-empty word other than %q", name, AutoBackend)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, have := range r.backends {
		if have.Name() == name {
			return fmt.Errorf("vm registry: backend %q registered twice", name)
		}
	}
	if len(r.backends) >= MaxBackends {
		return fmt.Errorf("vm registry: %d backends registered, the limit is MaxBackends=%d", len(r.backends), MaxBackends)
	}
	r.backends = append(r.backends, b)
	return nil
}

// Names lists the registered backends in preference order.
func (r *Registry) Names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, len(r.backends))
	for i, b := range r.backends {
		out[i] = b.Name()
	}
	return out
}

// Get returns the backend called name, available or not.
func (r *Registry) Get(name string) (Backend, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range r.backends {
		if b.Name() == name {
			return b, nil
		}
	}
	names := make([]string, len(r.backends))
	for i, b := range r.backends {
		names[i] = b.Name()
	}
	return nil, fmt.Errorf("%w %q (registered: %s)", ErrUnknownBackend, name, strings.Join(names, ", "))
}

// Pick returns the backend called name if it is available on this host;
// with name "" or AutoBackend it returns the first available backend in
// preference order. When none is, the error lists why for each.
func (r *Registry) Pick(name string) (Backend, error) {
	if name != "" && name != AutoBackend {
		b, err := r.Get(name)
		if err != nil {
			return nil, err
		}
		if err := b.Available(); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrBackendUnavailable, name, err)
		}
		return b, nil
	}
	r.mu.Lock()
	backends := append([]Backend(nil), r.backends...)
	r.mu.Unlock()
	if len(backends) == 0 {
		return nil, fmt.Errorf("%w: no backends registered", ErrBackendUnavailable)
	}
	var why []string
	for _, b := range backends {
		err := b.Available()
		if err == nil {
			return b, nil
		}
		why = append(why, fmt.Sprintf("%s: %v", b.Name(), err))
	}
	return nil, fmt.Errorf("%w: none of the backends can run here: %s", ErrBackendUnavailable, strings.Join(why, "; "))
}

// New is the factory: it picks a backend as Pick does and creates a VM.
func (r *Registry) New(name string, cfg VMConfig) (VMInstance, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	b, err := r.Pick(name)
	if err != nil {
		return nil, err
	}
	return b.New(cfg)
}
