//go:build !linux

package qemu

import "syscall"

// newSysProcAttr has nothing to add off Linux: there is no parent-death
// signal, so Stop is what ends QEMU.
func newSysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{} }
