package simpkg

import . "net"

func dotImport() {
	Dial("tcp", "x:1") // want `net\.Dial opens a real socket`
}
