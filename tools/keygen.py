"""Create a new secret key file and print its fingerprint."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
try:
    from mmseg_ppenc.keys import KEY_ENV_VAR, SecretKey
except ImportError as e:  # a broken or missing environment
    sys.exit(f'error: {e}\nThe environment is incomplete: run `bash tools/setup_env.sh` '
             'and use .venv/bin/python.')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('out', help='path of the new key file (must not exist)')
    parser.add_argument('--flip-compatible', action='store_true',
                        help='derive permutations that commute with horizontal flips, '
                        'so a keyless server may flip encrypted images')
    args = parser.parse_args(argv)
    parent = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(parent, mode=0o700, exist_ok=True)
    key = SecretKey.generate(flip_compatible=args.flip_compatible)
    try:
        key.save(args.out)
    except FileExistsError as e:
        sys.exit(f'error: {e}')
    print(f'Wrote key {key.fingerprint} to {args.out} (mode 600). Select it with: '
          f'export {KEY_ENV_VAR}={os.path.abspath(args.out)}')


if __name__ == '__main__':
    main()
