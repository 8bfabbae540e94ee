package vm

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Limits of a VMConfig. They are the envelope every backend accepts; a
// backend may refuse more (Firecracker caps vCPUs at 32 too).
const (
	// MinVCPUs and MaxVCPUs bound VMConfig.VCPUs.
	MinVCPUs = 1
	MaxVCPUs = 32
	// MinMemoryMiB is the least memory a Linux guest with the agent boots in.
	MinMemoryMiB = 64
	// MaxMemoryMiB bounds guest memory; a snapshot holds all of it, so it
	// also bounds snapshot size (see package vm/snapshot).
	MaxMemoryMiB = 16 << 10
	// MaxKernelCmdlineBytes is x86 Linux's COMMAND_LINE_SIZE.
	MaxKernelCmdlineBytes = 2048
	// DefaultBootTimeout applies when VMConfig.BootTimeout is zero.
	DefaultBootTimeout = 30 * time.Second
	// MaxBootTimeout bounds VMConfig.BootTimeout (TCG boots are slow, not
	// this slow).
	MaxBootTimeout = 10 * time.Minute
	// MaxHostPathBytes bounds a host path in the config.
	MaxHostPathBytes = 4096
	// MaxIDBytes bounds VMConfig.ID.
	MaxIDBytes = 64
)

// VMConfig describes a VM to create. The zero value is not valid: VCPUs,
// MemoryMiB and Kernel must be set. Networking is off unless Network is
// true.
type VMConfig struct {
	// ID names the VM; "" lets the backend choose one. Letters, digits,
	// '-', '_' and '.', at most MaxIDBytes.
	ID string
	// VCPUs is the number of virtual CPUs, MinVCPUs..MaxVCPUs.
	VCPUs int
	// MemoryMiB is guest memory in MiB, MinMemoryMiB..MaxMemoryMiB.
	MemoryMiB int
	// Kernel is the host path of the guest kernel image (required).
	Kernel string
	// Initrd is the host path of the initramfs ("" for none). Kelpie's
	// initramfs carries the guest agent as /init.
	Initrd string
	// RootDisk is the host path of a root disk image ("" for none).
	RootDisk string
	// RootDiskReadOnly attaches RootDisk read-only.
	RootDiskReadOnly bool
	// KernelCmdline is the kernel command line, at most
	// MaxKernelCmdlineBytes.
	KernelCmdline string
	// Network gives the guest a network device. Off by default: agents'
	// tools run without network unless asked.
	Network bool
	// BootTimeout bounds Boot; 0 means DefaultBootTimeout.
	BootTimeout time.Duration
}

// ConfigError reports one invalid VMConfig field. It matches
// ErrInvalidConfig.
type ConfigError struct {
	Field  string // the VMConfig field, "MemoryMiB"
	Value  any    // the rejected value
	Reason string // what is wrong, naming the limit
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("vm config: %s=%v: %s", e.Field, e.Value, e.Reason)
}

// Is makes every ConfigError match ErrInvalidConfig.
func (e *ConfigError) Is(target error) bool { return target == ErrInvalidConfig }

// Validate checks every field against its limits and returns all problems
// joined (each a *ConfigError), or nil. It does not look at the host: a
// backend checks that the files exist when it boots.
func (c VMConfig) Validate() error {
	var errs []error
	bad := func(field string, v any, format string, args ...any) {
		errs = append(errs, &ConfigError{Field: field, Value: v, Reason: fmt.Sprintf(format, args...)})
	}
	if len(c.ID) > MaxIDBytes {
		bad("ID", truncateForError(c.ID), "%d bytes, the limit is MaxIDBytes=%d", len(c.ID), MaxIDBytes)
	} else if !validID(c.ID) {
		bad("ID", c.ID, "want letters, digits, '-', '_' or '.'")
	}
	if c.VCPUs < MinVCPUs || c.VCPUs > MaxVCPUs {
		bad("VCPUs", c.VCPUs, "want %d..%d (MinVCPUs..MaxVCPUs)", MinVCPUs, MaxVCPUs)
	}
	if c.MemoryMiB < MinMemoryMiB || c.MemoryMiB > MaxMemoryMiB {
		bad("MemoryMiB", c.MemoryMiB, "want %d..%d MiB (MinMemoryMiB..MaxMemoryMiB)", MinMemoryMiB, MaxMemoryMiB)
	}
	if c.Kernel == "" {
		bad("Kernel", `""`, "a kernel image path is required")
	} else if err := checkHostPath(c.Kernel); err != nil {
		bad("Kernel", truncateForError(c.Kernel), "%v", err)
	}
	if c.Initrd != "" {
		if err := checkHostPath(c.Initrd); err != nil {
			bad("Initrd", truncateForError(c.Initrd), "%v", err)
		}
	}
	if c.RootDisk != "" {
		if err := checkHostPath(c.RootDisk); err != nil {
			bad("RootDisk", truncateForError(c.RootDisk), "%v", err)
		}
	} else if c.RootDiskReadOnly {
		bad("RootDiskReadOnly", true, "set without a RootDisk")
	}
	if len(c.KernelCmdline) > MaxKernelCmdlineBytes {
		bad("KernelCmdline", truncateForError(c.KernelCmdline), "%d bytes, the limit is MaxKernelCmdlineBytes=%d", len(c.KernelCmdline), MaxKernelCmdlineBytes)
	} else if strings.ContainsAny(c.KernelCmdline, "\x00\n") {
		bad("KernelCmdline", truncateForError(c.KernelCmdline), "contains a NUL or newline")
	}
	if c.BootTimeout < 0 || c.BootTimeout > MaxBootTimeout {
		bad("BootTimeout", c.BootTimeout, "want 0 (default %s) up to MaxBootTimeout=%s", DefaultBootTimeout, MaxBootTimeout)
	}
	return errors.Join(errs...)
}

// EffectiveBootTimeout is BootTimeout with the default applied.
func (c VMConfig) EffectiveBootTimeout() time.Duration {
	if c.BootTimeout == 0 {
		return DefaultBootTimeout
	}
	return c.BootTimeout
}

func validID(id string) bool {
	for _, r := range id {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
		default:
			return false
		}
	}
	return true
}

func checkHostPath(p string) error {
	switch {
	case len(p) > MaxHostPathBytes:
		return fmt.Errorf("%d bytes, the limit is MaxHostPathBytes=%d", len(p), MaxHostPathBytes)
	case strings.IndexByte(p, 0) >= 0:
		return errors.New("contains a NUL byte")
	case !strings.HasPrefix(p, "/"):
		return errors.New("want an absolute path")
	}
	return nil
}
