#!/usr/bin/env bash
# Build the Debian package of pg_branch for one PostgreSQL major version,
# named as PGDG names extension packages (postgresql-NN-pg-branch), from
# `cargo pgrx package`:
#
#   PG_VERSION=15 bash scripts/package.sh      # prints the path of the .deb
#
# It installs where Debian's and PGDG's postgresql-NN packages look:
#   /usr/lib/postgresql/NN/lib/pg_branch.so
#   /usr/share/postgresql/NN/extension/pg_branch.control, pg_branch--*.sql
#       (the install script and every upgrade script)
#   /usr/lib/postgresql/NN/bin/pg_branch     (the command-line tool: fork)
#   /usr/share/doc/postgresql-NN-pg-branch/   (README, copyright)
# whatever prefix the PostgreSQL it was built against has (16-18 here are
# built under /var/lib/pg_branch/pg): a library built against NN's headers
# loads into any NN.x server. It depends on postgresql-NN.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

v=$PG_VERSION
name="postgresql-$v-pg-branch"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -1)
arch=$(dpkg --print-architecture)
target="$REPO/target"
flags=()
[ "$v" = 15 ] || { target="$REPO/target/pg$v"; flags=(--no-default-features --features "pg$v"); }

say "PostgreSQL $v: cargo pgrx package"
(cd "$REPO" && CARGO_TARGET_DIR="$target" cargo pgrx package --pg-config "$PG_CONFIG" "${flags[@]}") >&2
tool=$(build_command_line_tool)
built="$target/release/pg_branch-pg$v"

stage="$REPO/target/deb/${name}_${version}_$arch"
rm -rf "$stage"
lib="$stage/usr/lib/postgresql/$v/lib"
ext="$stage/usr/share/postgresql/$v/extension"
bin="$stage/usr/lib/postgresql/$v/bin"
doc="$stage/usr/share/doc/$name"
mkdir -p "$lib" "$ext" "$bin" "$doc" "$stage/DEBIAN"
install -m 644 "$built$("$PG_CONFIG" --pkglibdir)/pg_branch.so" "$lib/"
# The control file, the install script, and the upgrade scripts (which
# cargo pgrx package copies from sql/).
install -m 644 "$built$("$PG_CONFIG" --sharedir)"/extension/pg_branch* "$ext/"
install -m 755 "$tool" "$bin/pg_branch"
strip --strip-unneeded "$lib/pg_branch.so" "$bin/pg_branch"
install -m 644 "$REPO/README.md" "$doc/README.md"
cat >"$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: pg_branch

Files: *
License: PostgreSQL
 Permission to use, copy, modify, and distribute this software and its
 documentation for any purpose, without fee, and without a written agreement
 is hereby granted, provided that the above copyright notice and this
 paragraph and the following two paragraphs appear in all copies.
 .
 IN NO EVENT SHALL THE PG_BRANCH DEVELOPERS BE LIABLE TO ANY PARTY FOR
 DIRECT, INDIRECT, SPECIAL, INCIDENTAL, OR CONSEQUENTIAL DAMAGES, INCLUDING
 LOST PROFITS, ARISING OUT OF THE USE OF THIS SOFTWARE AND ITS
 DOCUMENTATION, EVEN IF THE PG_BRANCH DEVELOPERS HAVE BEEN ADVISED OF THE
 POSSIBILITY OF SUCH DAMAGE.
 .
 THE PG_BRANCH DEVELOPERS SPECIFICALLY DISCLAIM ANY WARRANTIES, INCLUDING,
 BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS
 FOR A PARTICULAR PURPOSE. THE SOFTWARE PROVIDED HEREUNDER IS ON AN "AS IS"
 BASIS, AND THE PG_BRANCH DEVELOPERS HAVE NO OBLIGATIONS TO PROVIDE
 MAINTENANCE, SUPPORT, UPDATES, ENHANCEMENTS, OR MODIFICATIONS.
EOF
cat >"$stage/DEBIAN/control" <<EOF
Package: $name
Version: $version
Architecture: $arch
Maintainer: pg_branch developers <pg_branch@localhost>
Depends: postgresql-$v, libc6 (>= 2.34), libgcc-s1
Section: database
Priority: optional
Installed-Size: $(du -sk "$stage/usr" | cut -f1)
Description: copy-on-write CREATE DATABASE ... TEMPLATE for PostgreSQL $v
 pg_branch turns CREATE DATABASE ... TEMPLATE into a btrfs subvolume
 snapshot or a per-file reflink clone: milliseconds at any size, no extra
 disk until the copy diverges, while the template is in use. Add it to
 shared_preload_libraries and restart; CREATE EXTENSION pg_branch adds
 its SQL functions. Includes the pg_branch command (pg_branch fork: a
 copy-on-write copy of a whole running cluster).
EOF
out="$REPO/target/deb/${name}_${version}_$arch.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$out" >&2
echo "$out"
