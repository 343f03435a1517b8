# Sourced by prepare.sh and pack.sh: pip's flags for the GPU machine's interpreter (CPython 3.12, x86-64 glibc);
# pip matches each manylinux tag exactly, so every one the wheels use is named.
plat=(--only-binary=:all: --python-version 3.12 --implementation cp)
for p in manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_26 manylinux_2_24 manylinux_2_17 manylinux2014 \
         manylinux_2_5 manylinux1; do plat+=(--platform "${p}_x86_64"); done
