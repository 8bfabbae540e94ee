// Package cmdline shares the prefix "cmd" but is not under cmd/.
package cmdline

import "net"

func listen() { net.Listen("tcp", ":0") } // want `net\.Listen opens a real listening socket`
