package qemu

import "syscall"

// newSysProcAttr asks the kernel to kill QEMU when the thread that started
// it dies. Go does not end its threads in normal operation, so in practice
// this fires when the host process dies.
func newSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
