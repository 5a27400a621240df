// The signed-in user as the server sees it: read by the adapter from the
// request's HTTP-only cookies (verified against the pool's JWKS by the
// adapter's token validator). Only non-secret facts leave this module; no
// token is ever handed to a component (it would end up in the RSC payload).
import { cookies } from 'next/headers';
import { fetchAuthSession, getCurrentUser } from 'aws-amplify/auth/server';
import { amplifyServer } from './amplify-server';

export interface SessionInfo {
  username: string;
  userId: string;
  /** The access token's `exp` (seconds since the epoch). */
  accessTokenExp: number;
  /** The access token's `cognito:groups` (none: empty). */
  groups: string[];
}

export async function currentSession(): Promise<SessionInfo | null> {
  return amplifyServer().runWithAmplifyServerContext({
    nextServerContext: { cookies },
    operation: async (contextSpec) => {
      try {
        const session = await fetchAuthSession(contextSpec);
        const exp = session.tokens?.accessToken?.payload?.exp;
        if (!session.tokens?.accessToken || typeof exp !== 'number') return null;
        const user = await getCurrentUser(contextSpec);
        const claimed = session.tokens.accessToken.payload['cognito:groups'];
        const groups = Array.isArray(claimed) ? claimed.filter((g): g is string => typeof g === 'string') : [];
        return { username: user.username, userId: user.userId, accessTokenExp: exp, groups };
      } catch {
        return null;
      }
    },
  });
}
