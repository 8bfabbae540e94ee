package simpkg

import (
	"golang.org/x/sys/execabs" // want `import "golang.org/x/sys/execabs" starts real processes \[exec\]`
	"golang.org/x/sys/unix"
)

func xsys() int {
	execabs.Command("true")
	_ = unix.Stdin // want `unix\.Stdin is raw operating-system state \[syscall\]`
	if unix.EAGAIN > 0 {
		return unix.Getpagesize() // want `unix\.Getpagesize makes a raw system call \[syscall\]`
	}
	return 0
}
