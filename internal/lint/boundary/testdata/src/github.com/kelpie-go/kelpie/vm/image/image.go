// Package image stands for vm/image: it may exec (go build), not dial.
package image

import (
	"net"
	"os/exec"
)

func build() {
	exec.Command("go", "build").Run()
	net.Dial("tcp", "x:1") // want `net\.Dial opens a real socket \[socket\]`
}
