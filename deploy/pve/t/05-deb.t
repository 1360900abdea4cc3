#!/usr/bin/perl
# `make deb` builds a Debian package that installs the modules under
# /usr/share/perl5 (the storage plugin where PVE loads custom plugins) and
# has no maintainer scripts, so installing it restarts nothing.

use strict;
use warnings;

use File::Temp ();
use FindBin;
use Test::More;

plan skip_all => 'dpkg-deb or make is not installed'
    if system('command -v dpkg-deb >/dev/null && command -v make >/dev/null') != 0;

my $tmp = File::Temp::tempdir(CLEANUP => 1);
my $out = `make -s -C $FindBin::Bin/.. deb BUILD=$tmp 2>&1`;
is($?, 0, 'make deb') or diag($out);
my ($deb) = glob("$tmp/libpve-storage-backstop-perl_*_all.deb");
ok($deb && -f $deb, 'package built') or done_testing(), exit;
my @files = map { (split(' ', $_))[5] } split(/\n/, `dpkg-deb -c $deb`);
for my $f (qw(
    ./usr/share/perl5/PVE/Storage/Custom/BackstopPlugin.pm
    ./usr/share/perl5/PVE/BackupProvider/Plugin/Backstop.pm
    ./usr/share/perl5/Backstop/Client.pm
    ./usr/share/perl5/Backstop/Relay.pm
)) {
    ok((grep { $_ eq $f } @files), "installs $f");
}
is_deeply([grep { m{/PVE/Storage/Custom/.+\.pm$} } @files],
    ['./usr/share/perl5/PVE/Storage/Custom/BackstopPlugin.pm'],
    'only the plugin itself in PVE/Storage/Custom (PVE loads every .pm there)');
my $control = `dpkg-deb -f $deb`;
like($control, qr/^Depends:.*libpve-storage-perl \(>= 8\.3\.5\).*libjson-perl.*libio-socket-ssl-perl/m, 'depends');
my @ctl = split(/\n/, `dpkg-deb --ctrl-tarfile $deb | tar -t`);
is_deeply([sort grep { m{(pre|post)(inst|rm)$} } @ctl], [], 'no maintainer scripts: nothing is restarted');

done_testing();
