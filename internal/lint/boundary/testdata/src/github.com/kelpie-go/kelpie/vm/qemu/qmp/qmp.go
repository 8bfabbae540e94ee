// Package qmp is below vm/qemu, which the allow-list names exactly (no
// /...), so nothing is granted here.
package qmp

import "net"

func dial() { net.Dial("unix", "/tmp/qmp.sock") } // want `net\.Dial opens a real socket`
