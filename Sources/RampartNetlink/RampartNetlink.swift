/// RampartNetlink
